"""The ``stbench`` command line. Each subcommand lives in ``stbench/commands/<name>.py`` and
defines ``register(subparsers)``, which adds its parser and sets ``func`` to a function taking
the parsed arguments and returning an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbench",
        description="Autotune, benchmark and check block-sparse attention (Sparse Transformer "
        "patterns) across backends and peers.",
    )
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
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
