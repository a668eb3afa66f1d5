"""Errors of the user's making: a bad config, missing or damaged data, an unusable workdir.

Raising one of these means "the input is wrong, here is the fix": the command-line entry points
print it as one ``error: ...`` line on stderr and exit with status 2, without a traceback
(:mod:`plif_jax.cli`). Anything else that escapes is a bug and keeps its traceback. Each subclass
also derives from the built-in exception that callers caught before (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working.

The messages are written for a person at a terminal: one sentence on what is wrong and where,
then the fix (a flag to pass, a file to move, a command to run).
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


class IncompatibleRunError(CheckpointError, ValueError):
    """The workdir holds a run whose config or train-state structure differs from this one."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint is needed but the directory holds none (not a run directory, or empty)."""


class DiskError(UserError, OSError):
    """A write failed on a full, read-only or failing disk (the message names the path and the
    free space, :mod:`plif_jax.runtime.disk`)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept and how to continue (printed as one ``interrupted: ...`` line)."""


class NonFiniteError(UserError, FloatingPointError):
    """Training diverged (a non-finite loss, gradient or updated state): the message names the
    epoch and step and what to lower; nothing non-finite was saved."""
