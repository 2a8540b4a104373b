"""Subcommands of the ``stbench`` CLI, one module each (see stbench/cli.py), and their helpers."""

from __future__ import annotations

import glob
import json
import shutil
import sys

EXIT_BAD_INPUT = 2  # a user's mistake: one line naming the parameter and the fix


def csv_list(text: str) -> list[str]:
    """A comma-separated command-line value as a list (empty items dropped)."""
    return [t for t in text.split(",") if t]


def json_value(text: str):
    """A command-line JSON value (``null``, ``{"BLOCK_M": 64}``), for argparse ``type=``."""
    import argparse

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc.msg}): write e.g. "
                                         "'{\"BLOCK_M\": 64}' or null") from None


def fail(command: str, message: str) -> int:
    """Print ``stbench COMMAND: error: MESSAGE`` on stderr; returns the bad-input exit code."""
    print(f"stbench {command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def find_tool(name: str, explicit: str | None = None, install_globs: tuple[str, ...] = ()):
    """The path of a command-line tool: ``explicit`` if given, else ``name`` on the PATH, else
    the newest match of ``install_globs`` (where NVIDIA installs it); None when absent."""
    if explicit:
        return shutil.which(explicit)
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(m for g in install_globs for m in glob.glob(g))
    return matches[-1] if matches else None
