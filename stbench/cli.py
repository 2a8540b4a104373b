"""The ``stbench`` command line. Each subcommand lives in ``stbench/commands/<name>.py`` and
defines ``register(subparsers)``, which adds its parser and sets ``func`` to a function taking
the parsed arguments and returning an exit code.

Errors (``main``): a user's mistake is one line on stderr, ``stbench COMMAND: error: MESSAGE``,
and exit code 2, never a traceback. A user's mistake is an exception of ``user_errors()`` (bad
values, unknown layouts or backends, unreadable result, manifest or config files, a backend
that cannot run here, a missing or misplaced file) that stbench's own code raised; a ValueError
raised inside a library is not one. ``--debug`` (or ``STBENCH_DEBUG=1``) prints its traceback
too. Ctrl-C ends with one line and exit code 130. Any other exception is a bug: its traceback
is shown as Python shows it (exit code 1). A closed pipe (``stbench ... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from stbench.commands import EXIT_BAD_INPUT, fail

# Subcommand modules, in the order ``stbench --help`` lists them.
COMMAND_MODULES = (
    "layouts",
    "check",
    "memory",
    "sweep",
    "tune",
    "report",
    "profile",
    "sanitize",
    "sass",
    "ab",
    "regress",
    "model",
    "data",
)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
EXIT_BROKEN_PIPE = 1  # the reader of stdout went away
DEBUG_ENV = "STBENCH_DEBUG"
# Errors on a path a user named: each says which path and what is wrong with it.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean a user's mistake (or a missing package, GPU or file): the
    CLI turns each into one line and exit code 2. The one place that lists them. The project's
    input errors derive from ValueError (LayoutError, SweepError, ResultsError, ManifestError,
    ReadmeError, UnknownBackend, OptionError, TreeError, BaselineError, DataError, TileError, and
    plain ValueErrors naming a parameter); an error type of another base belongs in this tuple."""
    from stbench.backends import BackendUnavailable
    from stbench.reference.data import DataMissing

    return (ValueError, BackendUnavailable, DataMissing, *PATH_ERRORS)


def _raised_by_stbench(exc: BaseException) -> bool:
    """The exception's type is one of stbench's, or stbench's own code raised it (the last
    frame of its traceback is in a stbench module)."""
    if type(exc).__module__.split(".")[0] == "stbench":
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "stbench"


def is_user_error(exc: BaseException) -> bool:
    """A user's mistake (one line, exit code 2), as opposed to a bug (a traceback)."""
    if isinstance(exc, PATH_ERRORS):
        return True
    if not isinstance(exc, user_errors()):
        return False
    return _raised_by_stbench(exc) or not isinstance(exc, ValueError)


def describe(exc: BaseException) -> str:
    """The error as one line: a path error as 'PATH: what is wrong', others by their message."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror.lower()}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def command_of(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The subcommand named in ``argv`` ('sweep', 'layouts show'), for error lines."""
    words = []
    for word in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                   None)
        if word.startswith("-") or sub is None:
            continue
        if word not in sub.choices:
            break
        words.append(word)
        parser = sub.choices[word]
    return " ".join(words)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbench",
        description="Autotune, benchmark and check block-sparse attention (Sparse Transformer "
        "patterns) across backends and peers.",
        epilog="A user's mistake prints one line, 'stbench COMMAND: error: ...', and exits with "
        "code 2; --debug adds its traceback. Tables take --format table|markdown|csv|json.",
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of user errors too (also {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"stbench.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for manifests
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_BAD_INPUT
    command = command_of(parser, argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"stbench {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout's reader is gone: point stdout at /dev/null so the exit flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs right here
        if not is_user_error(exc):
            raise
        if args.debug or os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        return fail(command, describe(exc))


if __name__ == "__main__":
    sys.exit(main())
