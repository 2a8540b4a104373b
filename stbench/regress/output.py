"""Tables, JSON and Markdown of the verdicts of ``stbench ab`` and ``stbench regress``: pure
functions of the result records. The Markdown is a summary a CI system can post on a pull
request: the verdict counts, then the failing rows first, then the rest in a folded section."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from . import stats

COLOURS = {stats.FASTER: "green", stats.SAME: "white", stats.SLOWER: "red", stats.WRONG: "red",
           stats.UNMEASURED: "yellow", stats.SKIPPED: "dim"}
ICONS = {stats.FASTER: "faster", stats.SAME: "same", stats.SLOWER: "**SLOWER**",
         stats.WRONG: "**WRONG**", stats.UNMEASURED: "unmeasured", stats.SKIPPED: "skipped"}


def _ms(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def counts(results: Sequence) -> str:
    c = Counter(r.verdict for r in results)
    return ", ".join(f"{c[v]} {v}" for v in stats.VERDICTS if c[v])


def _ordered(results: Sequence) -> list:
    rank = {v: i for i, v in enumerate((stats.WRONG, stats.SLOWER, stats.UNMEASURED,
                                        stats.FASTER, stats.SAME, stats.SKIPPED))}
    return sorted(results, key=lambda r: rank[r.verdict])


def _emit(results: Sequence, columns, right, row_of, title: str, caption: str, console,
          fmt: str) -> None:
    """``results``, one row each (``row_of``), as a table (the verdict cell coloured) or in
    another ``--format`` (stbench.commands.tables)."""
    from stbench.commands.tables import Column, Rows, emit

    cols = tuple(Column(c, right=c in right,
                        style=(lambda v: COLOURS.get(v)) if c == "verdict" else None)
                 for c in columns)
    emit(Rows(title, cols, tuple(dict(zip(columns, row_of(r))) for r in results),
              caption=caption), fmt, con=console)


def _markdown_table(results: Sequence, columns, row_of) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = row_of(r)
        cells[columns.index("verdict")] = ICONS[r.verdict]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


# ----------------------------------------------------------------------------- ab
AB_COLUMNS = ("backend", "layout", "block", "N", "B", "mode", "head ms", "base ms",
              "head/base", "interval", "verdict", "why")


def ab_row(r) -> list[str]:
    interval = "-" if r.low is None else f"[{r.low:.3f}, {r.high:.3f}]"
    return [r.backend, r.layout, str(r.block or "-"), str(r.n_ctx), str(r.batch), r.mode,
            _ms(r.head_ms), _ms(r.base_ms), fmt_ratio(r.ratio), interval, r.verdict, r.reason]


AB_RIGHT = ("block", "N", "B", "head ms", "base ms", "head/base")


def print_ab(results: Sequence, console, head: str, base: str, settings,
             fmt: str = "table") -> None:
    caption = (f"ratio: median over {settings.rounds} rounds of t_head / t_base, interval: "
               f"{settings.confidence:.0%} bootstrap of that median; slower: ratio > "
               f"{1 + settings.threshold:.3f} and interval above 1")
    _emit(results, AB_COLUMNS, AB_RIGHT, ab_row, f"stbench ab: {head} against {base}", caption,
          console, fmt)


def ab_markdown(results: Sequence, head: str, base: str, settings) -> str:
    lines = [f"### stbench ab: {head} against {base}", "",
             f"{counts(results)} (threshold {settings.threshold:.1%}, {settings.rounds} rounds, "
             f"{settings.confidence:.0%} interval)", ""]
    failing = [r for r in _ordered(results) if r.verdict in stats.FAILING]
    rest = [r for r in _ordered(results) if r.verdict not in stats.FAILING]
    if failing:
        lines += _markdown_table(failing, AB_COLUMNS, ab_row) + [""]
    if rest:
        lines += ["<details><summary>the other problems</summary>", ""]
        lines += _markdown_table(rest, AB_COLUMNS, ab_row) + ["", "</details>"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- regress
GATE_COLUMNS = ("backend", "layout", "N", "mode", "ms", "baseline ms", "ratio", "threshold",
                "noise", "verdict", "why")


def gate_row(r) -> list[str]:
    return [r.backend, r.layout, str(r.n_ctx), r.mode, _ms(r.median_ms), _ms(r.base_median_ms),
            fmt_ratio(r.ratio), fmt_pct(r.threshold), fmt_pct(r.noise_now), r.verdict, r.reason]


GATE_RIGHT = ("N", "ms", "baseline ms", "ratio", "threshold", "noise")


def print_gate(results: Sequence, console, title: str, caption: str, fmt: str = "table") -> None:
    _emit(results, GATE_COLUMNS, GATE_RIGHT, gate_row, title, caption, console, fmt)


def gate_markdown(runs: Sequence[Sequence], title: str, notes: Sequence[str]) -> str:
    last = runs[-1] if runs else []
    failed_runs = sum(any(r.verdict in stats.FAILING for r in run) for run in runs)
    lines = [f"### {title}", "", f"{len(runs)} run(s), {failed_runs} with a failing verdict; "
             f"last run: {counts(last)}", ""]
    lines += [f"- {n}" for n in notes]
    failing = [r for run in runs for r in run if r.verdict in stats.FAILING]
    if failing:
        lines += ["", "Failing (every run):", ""] + _markdown_table(failing, GATE_COLUMNS,
                                                                     gate_row)
    lines += ["", "<details><summary>last run, every entry</summary>", ""]
    lines += _markdown_table(_ordered(last), GATE_COLUMNS, gate_row) + ["", "</details>"]
    return "\n".join(lines) + "\n"


def write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False,
                                default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"{type(x).__name__} is not JSON")


def finite(d):
    """A dict (nested) with non-finite floats replaced by None (JSON has no NaN)."""
    import math

    if isinstance(d, dict):
        return {k: finite(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [finite(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d
