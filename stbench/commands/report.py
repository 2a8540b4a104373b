"""``stbench report DIR``: REPORT.md, tables and plots from a results folder's JSONL files;
``stbench report --readme``: the README's generated sections (the CLI table and the results of
every ``reports/<suite>/<gpu>/`` folder) from the parser and the committed files.

    stbench report out/quick                 # writes out/quick/REPORT.md and PNGs
    stbench report out/std --out out/std-report
    stbench report --readme                  # rewrites README.md's generated sections
    stbench report --readme --check          # exit 1 if they are not what the files give
    stbench report out/quick --format csv    # also one line per sweep row on stdout
"""

from __future__ import annotations

import argparse

from stbench.commands.tables import FORMATS, Column, Rows, console, emit, say


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
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="with DIR: also print one line per sweep row (mode, layout, N, backend, "
                   "block, status, median ms, TFLOP/s, peak bytes, repetitions) on stdout as a "
                   "table, markdown, csv or json")
    p.add_argument("--width", type=int, default=None,
                   help="console width of --format table (default: the terminal's; unlimited "
                   "when piped)")
    p.set_defaults(func=run)


def run(args) -> int:
    from stbench import readme, report

    con = console(stderr=True)
    if (args.dir is None) == (args.readme is None):
        raise ValueError("give a results folder DIR, or --readme (not both)")
    if args.readme is not None:
        if args.check:
            stale = readme.stale_sections(args.readme, args.reports)
            if stale:
                say(con, f"{args.readme}: out of date: {', '.join(stale)} (run "
                    "`stbench report --readme`)")
                return 1
            say(con, f"{args.readme}: up to date")
            return 0
        changed = readme.write(args.readme, args.reports)
        say(con, f"{args.readme}: " + (f"rewrote {', '.join(changed)}" if changed
                                        else "already up to date"))
        return 0
    path = report.write_report(args.dir, args.out, skip_bad_lines=args.skip_bad_lines)
    say(con, f"wrote {path} and its plots")
    if args.format:
        df = report.load(args.dir, skip_bad_lines=args.skip_bad_lines)[0]
        caveat = report.timing_caveat(df["env"], df.loc[df.status == "ok", "reps"])
        table = report.summary_table(df).astype(object)
        emit(Rows(f"sweep rows of {args.dir}", SUMMARY_COLUMNS,
                  tuple(table.where(table.notna(), None).to_dict("records")),
                  notes=tuple(caveat)), args.format, args.width)
    return 0


def _g(digits: int):
    return lambda x: f"{x:.{digits}g}"


SUMMARY_COLUMNS = (
    Column("mode"), Column("layout"), Column("n_ctx", "N", right=True), Column("backend"),
    Column("block", right=True), Column("status"),
    Column("median_ms", "median ms", _g(4), right=True),
    Column("tflops", "TFLOP/s", _g(3), right=True),
    Column("peak_bytes", "peak bytes", right=True), Column("reps", right=True),
)
