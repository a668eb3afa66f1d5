"""Command-line entry points: a user's mistake is one ``error: ...`` line and exit status 2.

Every ``python -m experiments.*`` script calls :func:`run` instead of ``absl.app.run`` (an
argparse script, :func:`run_plain`):

- a :class:`plif_jax.errors.UserError` raised by the script (a bad config value, missing or
  damaged data, an unusable workdir or checkpoint) is printed as ``error: <message>`` on stderr
  and the process exits with status 2, without a traceback;
- so are the mistakes absl and ``ml_collections.config_flags`` find while parsing the command
  line: a config file that does not exist, an override of a field the config does not have
  (``--config.model.chanels=2``), a value of the wrong type, an unknown or missing flag;
- anything else is a bug and keeps its full traceback (absl's usual behaviour).

:func:`show_user_errors_briefly` does the same for a notebook: a ``UserError`` raised in a cell
shows as its one line instead of a traceback (the cell still fails).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections.config_flags.config_flags import is_config_flag

from plif_jax.errors import UserError
from plif_jax.runtime import disk

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
_HELP = "--helpfull lists every flag"


def error_line(message: Any) -> str:
    """``error: <message>``, the message's lines joined into one line."""
    text = " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())
    return f"error: {text or type(message).__name__}"


def fail(message: Any) -> NoReturn:
    """Prints :func:`error_line` of ``message`` on stderr and exits with status 2."""
    sys.stdout.flush()
    print(error_line(message), file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """``absl.app.run(main)`` with user errors as one line and exit status 2 (module docstring).

    Args:
      main: the script's ``main(argv)``.
      argv: the command line (None: ``sys.argv``).
    """

    def guarded(args: list[str]) -> Any:
        try:
            return guard(lambda: main(args))
        except app.UsageError as e:  # e.g. a stray positional argument
            fail(f"{e}; flags take the form --name=value ({_HELP}).")

    app.run(guarded, argv=None if argv is None else list(argv), flags_parser=parse_flags)


def run_plain(main: Callable[[], Any]) -> None:
    """:func:`run` for an entry point that parses its own arguments (argparse).

    A ``UserError`` from ``main()`` is one ``error: ...`` line and exit status 2 (argparse's own
    usage errors already exit 2 with its ``error:`` line); anything else keeps its traceback.
    """
    return guard(main)


def guard(call: Callable[[], Any]) -> Any:
    """``call()``, with a user's mistake, a disk fault or Ctrl-C as one line (module docstring).

    - a ``UserError``: ``error: <message>``, exit status 2;
    - an ``OSError`` of a full, read-only or failing disk (:mod:`plif_jax.runtime.disk`):
      ``error: cannot write PATH: ... (N free there)...``, exit status 2;
    - Ctrl-C (``KeyboardInterrupt``): ``interrupted: <what was kept>; run the same command again
      to continue``, exit status 130 (the shell's code for SIGINT).
    """
    try:
        return call()
    except UserError as e:
        fail(e)
    except KeyboardInterrupt as e:
        interrupted(e)
    except OSError as e:
        message = disk.describe(e)
        if message is None:
            raise
        fail(f"{message}. Make room there or choose another, writable location, then run the "
             "same command again.")  # fmt: skip


def interrupted(e: BaseException) -> NoReturn:
    """Prints ``interrupted: ...`` (``e``'s message, or what a stop keeps) and exits 130."""
    sys.stdout.flush()
    text = " ".join(str(e).split()) or (
        "stopped by Ctrl-C; every file already written is kept whole (checkpoints, frames and "
        "records are written whole or not at all); run the same command again to continue."
    )
    print(f"interrupted: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the command line's mistakes turned into :func:`fail`.

    Returns:
      The arguments left after the flags (absl's ``flags_parser`` contract).
    """
    for name, path in _config_file_arguments(argv):
        if path is not None and not os.path.isfile(path.split(":", 1)[0]):
            fail(_missing_config_file(name, path))
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:  # unknown flag, missing required flag, value of the wrong type
        fail(f"{e} ({_HELP}).")
    except (AttributeError, KeyError) as e:
        # ml_collections raises these while applying --config.a.b=... to a config lacking a.b.
        override = _override_naming(argv, e)
        if override is None:
            raise  # not an override: a bug in a config file keeps its traceback
        suggestion = re.search(r"Did you mean [^?]*\?", _first_line(e))
        fail(
            f"{override}: the config has no field {_field_of(override)}"
            f"{' (' + suggestion.group(0).lower() + ')' if suggestion else ''}; "
            "configs/common.py lists every field with a comment."
        )
    for name in _config_flag_names():
        value = flags.FLAGS[name].value
        try:
            if value is not None:
                value.get("dataset")  # a file that failed to load raises here
        except OSError as e:
            fail(f"--{name}: cannot load the config file: {_first_line(e)}.")
    return rest


def show_user_errors_briefly() -> bool:
    """In IPython / Jupyter, shows a ``UserError`` raised in a cell as its ``error: ...`` line.

    The cell still fails (execution stops there, ``jupyter execute`` exits non-zero); only the
    traceback is left out. Other exceptions keep theirs.

    Returns:
      True when an IPython shell was found and the handler installed.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def handler(self, etype, value, tb, tb_offset=None):
        del tb, tb_offset
        # _showtraceback is how IPython (and ipykernel) publish an error with a given text.
        self._showtraceback(etype, value, [error_line(value)])

    shell.set_custom_exc((UserError,), handler)
    return True


# --- helpers ----------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    # ml_collections quotes its KeyError text twice: "'\\'x\\'\\nDid you mean ...'".
    text = text.strip("'\"").replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.split())


def _config_flag_names() -> list[str]:
    return [name for name in flags.FLAGS if is_config_flag(flags.FLAGS[name])]


def _config_file_arguments(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(flag name, file argument)`` of every config-file flag given on the command line."""
    out = []
    for name in _config_flag_names():
        for i, arg in enumerate(argv):
            if arg in (f"--{name}", f"-{name}"):
                out.append((name, argv[i + 1] if i + 1 < len(argv) else None))
            elif arg.startswith((f"--{name}=", f"-{name}=")):
                out.append((name, arg.split("=", 1)[1]))
    return out


def _missing_config_file(name: str, path: str) -> str:
    here = os.getcwd()
    configs = os.path.join(here, "configs")
    known = (
        sorted(f for f in os.listdir(configs) if f.endswith(".py") and f[0] != "_")
        if (os.path.isdir(configs))
        else []
    )
    hint = f"; configs/ holds {', '.join(known)}" if known else ""
    return (
        f"--{name}: config file {path.split(':', 1)[0]} not found (relative paths start at "
        f"{here}){hint}. Example: --{name}=configs/quickstart.py"
    )


def _override_naming(argv: Sequence[str], e: BaseException) -> str | None:
    """The ``--config.a.b=value`` argument whose field ``e`` (a lookup error) is about."""
    match = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)'", _first_line(e) if e.args else "")
    if match is None:
        return None
    missing = match.group(1)
    for name in _config_flag_names():
        for arg in argv:
            m = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
            if m and missing in m.group(1).split("."):
                return arg
    return None


def _field_of(override: str) -> str:
    return override.lstrip("-").split("=", 1)[0].split(".", 1)[1]
