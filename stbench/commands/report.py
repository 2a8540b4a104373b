"""``stbench report DIR``: REPORT.md, tables and plots from a sweep's JSONL files.

    stbench report out/quick                 # writes out/quick/REPORT.md and PNGs
    stbench report out/std --out reports/std
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write REPORT.md and plots from a results folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="results folder (or one JSONL file)")
    p.add_argument("--out", default=None, help="where to write (default: DIR)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from stbench.report import write_report
    from stbench.results import ResultsError

    console = Console(stderr=True)
    try:
        path = write_report(args.dir, args.out)
    except ResultsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(f"wrote {path} and its plots")
    return 0
