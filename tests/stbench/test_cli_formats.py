"""CLI output that pipes well: tables never wrap when stdout is not a terminal, every table
command takes --format table|markdown|csv|json, and user text keeps its brackets and colons
(no rich markup, no emoji codes)."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from stbench import cli, results
from stbench.commands.tables import Column, Rows, emit

TINY_ROWS = dict(batch=1, heads=2, head_dim=32, dtype="float32", mode="fwd", layout="causal",
                 block=32, token_density=0.5, block_density=0.5, layout_hash="h", nnz=1,
                 status="ok", median_ms=1.0, reps=5, env={"gpu": None, "torch": "2"})


def _results_folder(tmp_path, ns=(256, 512)):
    rows = [results.ResultRow(n_ctx=n, backend=b, **TINY_ROWS) for n in ns
            for b in ("dense", "sdpa")]
    results.append_rows(tmp_path / "results.jsonl", rows)
    return tmp_path


def test_tables_do_not_wrap_when_piped(capsys):
    """Under a pipe rich used to wrap at 80 columns; every generator's row is now one line."""
    assert cli.main(["layouts", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("causal", "bigbird", "longformer"):
        line = next(x for x in out.splitlines() if f" {name} " in x)
        assert line.rstrip().endswith("│") and "." in line  # its whole description on it


def test_a_long_error_line_is_not_wrapped(capsys):
    assert cli.main(["sweep", "--preset", "quick", "--layouts", "fixd", "--out", "o",
                     "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1


def test_brackets_survive(capsys):
    """The console ate '[layout.NAME]' as markup: the hint read 'define it in a  table'."""
    assert cli.main(["sweep", "--preset", "quick", "--layouts", "fixd", "--out", "o",
                     "--dry-run"]) == 2
    assert "define it in a [layout.NAME] table" in capsys.readouterr().err


def test_an_error_at_line_100_is_not_an_emoji(tmp_path, capsys):
    """rich printed 'results.jsonl:100:' with ':100:' as the emoji of that name."""
    path = _results_folder(tmp_path, ns=range(1, 51)) / "results.jsonl"  # 100 rows
    lines = path.read_text().splitlines(keepends=True)
    lines[99] = "{not json\n"  # line 100, not the last one (a cut-off last line is skipped)
    path.write_text("".join(lines) + lines[0])
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl:100: not valid JSON" in err and "\N{HUNDRED POINTS SYMBOL}" not in err


@pytest.mark.parametrize("fmt", ["markdown", "csv", "json"])
def test_layouts_show_formats(fmt, capsys):
    assert cli.main(["layouts", "show", "strided", "--n-ctx", "1024", "--stride", "32",
                     "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = {r["block"]: r for r in json.loads(out)}
        assert rows[32]["nnz"] == 32 and "block" in rows[64]["error"]
    elif fmt == "csv":
        rows = {r["block"]: r for r in csv.DictReader(io.StringIO(out))}
        assert rows["32"]["nnz"] == "32" and rows["32"]["plan_bytes"].isdigit()
    else:
        assert "| block | nnz |" in out and "|---:|" in out


COMMANDS = [  # (argv, a key of the JSON rows)
    (["layouts", "list"], "parameters"),
    (["memory", "--n-ctx", "1024", "--layout", "causal"], "dense_stored"),
    (["memory", "--seed-table"], "stored_model"),
    (["check", "--backends", "dense", "--layouts", "causal", "--n-ctx", "64"], "fwd_err"),
    (["sweep", "--preset", "quick", "--out", "o", "--dry-run"], "block_density"),
    (["tune", "--list", "--cache", "{tmp}/none.json"], None),
    (["data", "info"], "status"),
    (["report", "{tmp}"], "median_ms"),
]


@pytest.mark.parametrize("argv, key", COMMANDS, ids=lambda v: " ".join(v[:2]) if
                         isinstance(v, list) else str(v))
@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_every_table_command_takes_format(argv, key, fmt, tmp_path, capsys):
    _results_folder(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main([*argv, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list) and (key is None or key in rows[0])
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert key is None or key in rows[0]
    else:
        assert "|---" in out


def test_report_format_marks_cpu_timings(tmp_path, capsys):
    _results_folder(tmp_path)
    assert cli.main(["report", str(tmp_path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [r["n_ctx"] for r in rows] == ["256", "256", "512", "512"]
    assert "not kernel timings" not in captured.out  # csv holds only the rows
    assert cli.main(["report", str(tmp_path), "--format", "table"]) == 0
    assert "Measured on a CPU: not kernel timings" in capsys.readouterr().out


def test_emit_formats_of_raw_values():
    rows = Rows("t", (Column("name"), Column("ms", fmt=lambda x: f"{x:.1f}", right=True),
                      Column("config"), Column("hidden", shown=False)),
                ({"name": "a|b", "ms": 1.25, "config": {"BLOCK_M": 64}, "hidden": 1},
                 {"name": "[x]:100:", "ms": float("nan")}))
    text = {}
    for fmt in ("csv", "json", "markdown", "table"):
        out = io.StringIO()
        sys_stdout, sys.stdout = sys.stdout, out
        try:
            emit(rows, fmt)
        finally:
            sys.stdout = sys_stdout
        text[fmt] = out.getvalue()
    assert 'a|b,1.25,"{""BLOCK_M"": 64}",1' in text["csv"]  # raw values, the hidden one too
    assert '"ms": null' in text["json"] and '"hidden": 1' in text["json"]
    assert "| a\\|b | 1.2 | {'BLOCK_M': 64} |" in text["markdown"]  # shown text, | escaped
    assert "[x]:100:" in text["table"] and "hidden" not in text["table"]
