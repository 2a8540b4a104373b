"""``stbench check``: rows, JSON output, and a non-zero exit when a backend is wrong."""

import json

import pytest

from stbench import cli
from stbench.backends import BackendUnavailable
from stbench.kernels import sdpa

ARGS = ["check", "--backends", "dense,sdpa,flex", "--layouts", "causal,random_perm",
        "--dtypes", "float64,float16", "--n-ctx", "64", "--block", "16", "--head-dim", "8",
        "--json", "--width", "100"]


def rows_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_check_passes_and_prints_json(capsys):
    assert cli.main(ARGS) == 0
    rows = rows_of(capsys.readouterr().out)
    assert len(rows) == 2 * 2 * 3  # layouts x dtypes x backends
    by = {(r["backend"], r["layout"], r["dtype"]): r for r in rows}
    assert by[("dense", "random_perm", "float64")]["status"] == "ok"  # chunked vs plain
    assert by[("dense", "random_perm", "float64")]["fwd_err"] < 1e-13
    assert by[("sdpa", "causal", "float16")]["status"] == "ok"
    assert by[("sdpa", "random_perm", "float16")]["status"] == "unsupported"
    assert {r["status"] for r in rows} <= {"ok", "unsupported"}


def test_check_fails_on_a_wrong_backend(capsys, monkeypatch):
    real = sdpa.attention
    monkeypatch.setattr(sdpa, "attention", lambda *a, **kw: real(*a, **kw) * 1.01)
    assert cli.main(ARGS) == 1
    rows = rows_of(capsys.readouterr().out)
    bad = [r for r in rows if r["status"] == "incorrect"]
    assert {(r["backend"], r["layout"]) for r in bad} == {("sdpa", "causal")}


def test_check_reports_a_crashing_backend(capsys, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sdpa, "attention", boom)
    assert cli.main(ARGS) == 1
    captured = capsys.readouterr()
    rows = [r for r in rows_of(captured.out) if r["status"] == "error"]
    assert rows and all("kernel exploded" in r["message"] for r in rows)


def test_check_lists_a_refusal_as_skipped(capsys, monkeypatch):
    """A backend that refuses the inputs in attention() (a head dim, a block) says why and is
    skipped, like one that cannot run here; the peers without flash-attn-4 are skipped too."""
    def refuse(*a, **kw):
        raise BackendUnavailable("backend 'sdpa' cannot run this problem: head dim 8")

    monkeypatch.setattr(sdpa, "attention", refuse)
    assert cli.main([*ARGS, "--backends", "sdpa,fa4,flex_flash"]) == 0
    rows = rows_of(capsys.readouterr().out)
    assert {r["status"] for r in rows} == {"unsupported"}
    assert any("head dim 8" in r["message"] for r in rows if r["backend"] == "sdpa")


@pytest.mark.parametrize("bad, pattern", [
    (["--backends", "flash"], "choose one of"),
    (["--dtypes", "float8"], "unknown dtype"),
    (["--n-ctx", "0"], "--n-ctx"),
    (["--layouts", "causal,spiral"], "unknown ['spiral']"),
])
def test_check_bad_options(capsys, bad, pattern):
    assert cli.main(["check", *bad]) == 2
    assert pattern in capsys.readouterr().err
