"""Errors of the user's making: a bad config, missing or damaged data, an unusable workdir.

Raising one of these means "the input is wrong, here is the fix": the command-line entry points print
it as one ``error: ...`` line on stderr and exit with status 2, without a traceback. Anything else
that escapes is a bug and keeps its traceback. Each subclass also derives from the built-in exception
that callers caught before (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: the message names what is wrong, where, and the fix."""


class ConfigError(UserError, ValueError):
    """A config field (or a combination of fields) is invalid."""


class MissingDataError(UserError, FileNotFoundError):
    """A dataset, archive or file the run needs is not where it was looked for."""


class DataError(UserError, ValueError):
    """Data is present but unreadable: truncated, in another format, or inconsistent."""


class CheckpointError(UserError, RuntimeError):
    """A workdir or checkpoint cannot be used (incompatible config, all checkpoints damaged...)."""
