"""Tables of the CLI in four formats (``--format table|markdown|csv|json``) and the one console
every command prints through.

A command builds a ``Rows`` (a title, its columns, one dict per row of raw values) and hands it
to ``emit``:

- ``table``: a rich table for a person. Cells are plain text (never parsed as rich markup, so
  ``[layout.NAME]`` or ``file:100:`` print as written); when stdout is not a terminal the table
  is as wide as its content and never wraps (a pipe or a file gets whole lines);
- ``markdown``: the title, a GitHub table of the displayed values and the caption;
- ``csv``: a header of column keys and the raw values (numbers unformatted, lists and dicts as
  JSON, None empty), for spreadsheets and ``pandas.read_csv``;
- ``json``: a JSON array of the rows as ``{key: raw value}`` (non-finite floats as null).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

FORMATS = ("table", "markdown", "csv", "json")
NO_WRAP_WIDTH = 100_000  # console width when the output is not a terminal: nothing wraps
MISSING = "-"  # a None cell in the table and markdown formats


def console(stderr: bool = False, width: int | None = None):
    """The rich console of a command: no emoji codes (``:100:`` stays text), no highlighting,
    and, when its stream is not a terminal and no ``width`` is given, wide enough that nothing
    wraps."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if width is None and not stream.isatty():
        width = NO_WRAP_WIDTH
    return Console(stderr=stderr, width=width, emoji=False, highlight=False)


def say(con, text: str, style: str | None = None) -> None:
    """Print ``text`` as written (no markup, no emoji), in ``style`` on a terminal."""
    con.print(text, style=style, markup=False, emoji=False, highlight=False,
              soft_wrap=not con.is_terminal)


def show(value) -> str:
    """The displayed text of a raw value: None as '-', everything else as str."""
    return MISSING if value is None else str(value)


@dataclass(frozen=True)
class Column:
    """One column: ``key`` of the row dicts, its ``header`` (default: the key), ``fmt`` from the
    raw value to the displayed text (table and markdown), right-justified or not, ``style`` from
    the raw value to a rich style of the cell (table format only; None: plain), and whether the
    table and markdown formats show it (csv and json always do)."""

    key: str
    header: str | None = None
    fmt: Callable[[Any], str] = show
    right: bool = False
    style: Callable[[Any], str | None] | None = None
    shown: bool = True

    @property
    def title(self) -> str:
        return self.header or self.key


@dataclass(frozen=True)
class Rows:
    """A table as data: ``rows`` are dicts of raw values keyed by the columns' keys (a missing
    key is None)."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[dict, ...]
    caption: str = ""
    notes: tuple[str, ...] = field(default=())  # lines printed after the table (table, markdown)

    @property
    def shown(self) -> tuple[Column, ...]:
        """The columns of the table and markdown formats."""
        return tuple(c for c in self.columns if c.shown)

    def cells(self, row: dict) -> list[str]:
        return [c.fmt(row.get(c.key)) if row.get(c.key) is not None else MISSING
                for c in self.shown]


def add_format_option(parser, json_alias: bool = False) -> None:
    """``--format`` (and, for a command that had it, ``--json`` meaning ``--format json``)."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output: a table for the terminal (never wrapped when piped), "
                        "markdown, csv or json (default: table)")
    if json_alias:
        parser.add_argument("--json", dest="format", action="store_const", const="json",
                            help="the same as --format json")
    parser.add_argument("--width", type=int, default=None,
                        help="console width of the table format (default: the terminal's; "
                        "unlimited when piped)")


def emit(rows: Rows, fmt: str = "table", width: int | None = None, stderr: bool = False,
         con=None) -> None:
    """Print ``rows`` in ``fmt`` (one of FORMATS) on stdout (on stderr with ``stderr``), or
    through the rich console ``con`` when one is given (its file for the text formats)."""
    con = con or console(stderr, width)
    stream = con.file
    if fmt == "json":
        stream.write(json.dumps([_jsonable(r, rows.columns) for r in rows.rows], indent=1,
                                default=_plain) + "\n")
    elif fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow([c.key for c in rows.columns])
        for r in rows.rows:
            writer.writerow([_csv_cell(r.get(c.key)) for c in rows.columns])
    elif fmt == "markdown":
        stream.write(markdown(rows))
    elif fmt == "table":
        _rich(rows, con)
    else:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")


def markdown(rows: Rows) -> str:
    """The title, a GitHub markdown table of the displayed cells, the caption and notes."""
    lines = [f"**{rows.title}**", ""] if rows.title else []
    lines += ["| " + " | ".join(_md(c.title) for c in rows.shown) + " |",
              "|" + "".join("---:|" if c.right else "---|" for c in rows.shown)]
    lines += ["| " + " | ".join(_md(x) for x in rows.cells(r)) + " |" for r in rows.rows]
    if rows.caption:
        lines += ["", f"_{rows.caption}_"]
    if rows.notes:
        lines += [""] + list(rows.notes)
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(row: dict, columns) -> dict:
    return {c.key: _finite(row.get(c.key)) for c in columns}


def _plain(v):
    """A JSON value for what json cannot write itself: a numpy / torch scalar's Python value,
    else its text."""
    return v.item() if hasattr(v, "item") else str(v)


def _csv_cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return str(v)


def _rich(rows: Rows, con) -> None:
    from rich.table import Table
    from rich.text import Text

    if rows.title:  # a line of its own: a rich title or caption wraps at the table's width
        say(con, rows.title, style="bold")
    table = Table()
    for c in rows.shown:
        table.add_column(Text(c.title), justify="right" if c.right else "left", overflow="fold")
    for r in rows.rows:
        table.add_row(*(Text(text, style=(c.style(r.get(c.key)) if c.style else None) or "")
                        for c, text in zip(rows.shown, rows.cells(r))))
    con.print(table)
    for note in ((rows.caption,) if rows.caption else ()) + rows.notes:
        say(con, note)
