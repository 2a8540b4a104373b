"""Command-line options shared by ``stbench ab`` and ``stbench regress``, and their checks:
each bad value becomes one line naming the option and the fix (``OptionError``)."""

from __future__ import annotations

import argparse
import os

from stbench.commands import csv_list
from stbench.commands.tables import FORMATS
from stbench.tuning.measure import BenchSettings

from .sample import CHECK_ROWS


class OptionError(ValueError):
    """A bad command-line value; the message names the option and the fix."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in the help where there is one (not for options defaulting to None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_common(p: argparse.ArgumentParser, bench: BenchSettings) -> None:
    p.add_argument("--backends", default=None,
                   help="comma-separated kernel backends (default: every registered kernel "
                   "backend, i.e. not a peer and not the reference; those that cannot run here "
                   "are listed as skipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (fresh per round)")
    p.add_argument("--check-rows", type=int, default=CHECK_ROWS,
                   help="query rows per head checked against dense (0: every row where the "
                   "check's own rule allows)")
    p.add_argument("--warmup-ms", type=float, default=bench.warmup_ms,
                   help="timer warm-up per measurement (ms)")
    p.add_argument("--rep-ms", type=float, default=bench.rep_ms,
                   help="timed repetitions per measurement (ms of kernel time)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the records as JSON")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="write a Markdown summary (for a pull-request comment)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="the verdict table on stdout: a table (never wrapped when piped), "
                   "markdown, csv or json (the other lines go to stderr unless table)")
    p.add_argument("--width", type=int, default=None,
                   help="console width of the table (default: the terminal's; unlimited when "
                   "piped)")


def device_of(args):
    """The torch device; on a machine without CUDA, Triton is set to its interpreter first."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise OptionError(f"--device {args.device!r}: {exc}") from None


def bench_settings(args) -> BenchSettings:
    if not args.warmup_ms >= 0:
        raise OptionError(f"--warmup-ms {args.warmup_ms} must be >= 0")
    if not args.rep_ms > 0:
        raise OptionError(f"--rep-ms {args.rep_ms} must be > 0")
    return BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, hide_host=True)


def check_rows(args) -> int | None:
    if args.check_rows < 0:
        raise OptionError(f"--check-rows {args.check_rows} must be >= 0 (0: the check's rule)")
    return args.check_rows or None


def backend_names(args) -> list[str] | None:
    """The backends asked for (validated against the registry), or None for the default."""
    from stbench import backends

    from .problems import package_of

    if not args.backends:
        return None
    names = csv_list(args.backends)
    for n in names:
        try:
            package_of(n)
        except ValueError as exc:  # UnknownBackend is a ValueError too
            raise OptionError(f"--backends: {exc}") from None
    if not names:
        raise OptionError(f"--backends {args.backends!r} names no backend: use "
                          f"{', '.join(backends.names())}")
    return names


def positive_ints(text: str, option: str) -> list[int]:
    try:
        out = [int(t) for t in csv_list(text)]
    except ValueError:
        raise OptionError(f"{option} {text!r} must be comma-separated integers") from None
    if not out or any(x <= 0 for x in out):
        raise OptionError(f"{option} {text!r} must be positive integers, e.g. 4096,16384")
    return out
