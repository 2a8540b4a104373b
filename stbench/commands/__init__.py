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


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of positive integers (``4096,16384``), for argparse ``type=``:
    argparse names the option in its message."""
    import argparse

    try:
        out = [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers: write e.g. "
                                         "4096,16384") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 4096,16384")
    return out


def block_problem(n_ctx: int, block: int) -> str | None:
    """Why ``--block`` (with ``--n-ctx``) cannot build the conformance layouts, else None."""
    from stbench.layouts import ALLOWED_BLOCKS

    if block not in ALLOWED_BLOCKS:
        return f"--block {block}: use one of {', '.join(map(str, ALLOWED_BLOCKS))}"
    if n_ctx % block:
        return (f"--n-ctx {n_ctx} is not a multiple of --block {block}: "
                f"use e.g. --n-ctx {n_ctx // block * block or block}")
    return None


def torch_device(text: str) -> str:
    """A torch device name (``cpu``, ``cuda``, ``cuda:1``) that exists here, for argparse
    ``type=``."""
    import argparse

    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device: use cpu, cuda or "
                                         "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: there is no CUDA GPU here: use cpu")
    return text


def out_folder(option: str, path) -> None:
    """Refuse an output folder that names an existing file (ValueError naming ``option``)."""
    import os

    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} is a file, not a folder: name a new or existing "
                         "folder")


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
