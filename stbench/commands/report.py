"""``stbench report DIR``: REPORT.md, tables and plots from a results folder's JSONL files;
``stbench report --readme``: the README's generated sections (the CLI table and the results of
every ``reports/<suite>/<gpu>/`` folder) from the parser and the committed files.

    stbench report out/quick                 # writes out/quick/REPORT.md and PNGs
    stbench report out/std --out out/std-report
    stbench report --readme                  # rewrites README.md's generated sections
    stbench report --readme --check          # exit 1 if they are not what the files give
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write REPORT.md and plots from a results folder; --readme: the "
        "README's results and CLI sections",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", nargs="?", help="results folder (or one JSONL file)")
    p.add_argument("--out", default=None, help="where to write (default: DIR)")
    p.add_argument("--readme", nargs="?", const="README.md", default=None, metavar="FILE",
                   help="regenerate the generated sections of FILE (default README.md)")
    p.add_argument("--reports", default="reports",
                   help="with --readme: the folder of <suite>/<gpu>/ results (default reports)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip unreadable lines of the JSONL files, with a warning naming each")
    p.add_argument("--check", action="store_true",
                   help="with --readme: change nothing, exit 1 if a section is out of date")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from stbench import manifest, readme
    from stbench.report import write_report
    from stbench.results import ResultsError

    console = Console(stderr=True)
    if (args.dir is None) == (args.readme is None):
        console.print("[red]error:[/red] give a results folder DIR, or --readme (not both)")
        return 2
    try:
        if args.readme is not None:
            if args.check:
                stale = readme.stale_sections(args.readme, args.reports)
                if stale:
                    console.print(f"{args.readme}: out of date: {', '.join(stale)} (run "
                                  "`stbench report --readme`)")
                    return 1
                console.print(f"{args.readme}: up to date")
                return 0
            changed = readme.write(args.readme, args.reports)
            console.print(f"{args.readme}: " + (f"rewrote {', '.join(changed)}" if changed
                                                else "already up to date"))
            return 0
        path = write_report(args.dir, args.out, skip_bad_lines=args.skip_bad_lines)
    except (ResultsError, manifest.ManifestError, readme.ReadmeError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(f"wrote {path} and its plots")
    return 0
