"""``stbench tune --configs`` (given configurations side by side on the one row schema) and
``stbench layouts bench`` (layout and plan building timed in fresh processes)."""

import json

import pytest

from stbench import results
from stbench.cli import main


def test_tune_configs_measures_each_against_dense_into_result_rows(tmp_path, capsys):
    rows_path = tmp_path / "rows.jsonl"
    code = main(["tune", "--layout", "local", "--n-ctx", "256", "--batch", "1", "--heads", "2",
                 "--head-dim", "16", "--dtype", "float32", "--mode", "fwd+bwd",
                 "--backends", "sdpa,dense", "--block", "32", "--configs", "null", "{}",
                 "--rows", str(rows_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = results.read_rows(rows_path)  # validates the schema of every line
    assert {r.backend for r in rows} == {"sdpa", "dense"}
    assert all(r.block == 32 and r.config == {} and r.kind == "tune" for r in rows)
    sdpa = [r for r in rows if r.backend == "sdpa"]
    assert all(r.status == "unsupported" for r in sdpa)  # local is neither full nor causal
    dense = [r for r in rows if r.backend == "dense"]
    assert dense and all(r.status == "ok" and r.median_ms > 0 for r in dense)
    for line in rows_path.read_text().splitlines():
        assert "status" in json.loads(line) and "ok" not in json.loads(line)
    assert "local N=256" in out.out and not (tmp_path / "tune.json").exists()


def test_tune_configs_bad_input_is_one_line(capsys):
    assert main(["tune", "--block", "32"]) == 2
    assert "--block goes with --configs" in capsys.readouterr().err
    assert main(["tune", "--layout", "causal", "--n-ctx", "256", "--configs", "[1]"]) == 2
    assert "each config is a JSON object" in capsys.readouterr().err


def test_layouts_bench_writes_a_row_per_configuration(tmp_path, capsys):
    out = tmp_path / "plan.jsonl"
    assert main(["layouts", "bench", "--out", str(out), "--n-ctx", "4096", "--layouts",
                 "fixed", "--blocks", "32", "--stride", "128", "--repeat", "1",
                 "--width", "200"]) == 0
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["schema"] == "stbench.plan_bench/2" and row["status"] == "ok"
    assert row["nnz"] > 0 and row["plan_bytes"] > 0 and row["peak_rss_bytes"] > 0
    assert row["gen_s"] > 0 and row["env"]["torch"]
    assert "fixed" in capsys.readouterr().out


def test_layouts_bench_names_an_unknown_layout(tmp_path, capsys):
    assert main(["layouts", "bench", "--out", str(tmp_path / "x"), "--layouts", "fixd"]) == 2
    assert "unknown layouts ['fixd']" in capsys.readouterr().err


def test_tune_configs_for_one_backend_beside_the_others(tmp_path, capsys):
    """``BACKEND:JSON`` is measured for that backend alone, beside the plain items; a backend
    no item names runs its default."""
    rows_path = tmp_path / "rows.jsonl"
    code = main(["tune", "--layout", "causal", "--n-ctx", "256", "--batch", "1", "--heads", "1",
                 "--head-dim", "32", "--dtype", "float32", "--mode", "fwd",
                 "--backends", "dense,triton", "--block", "32", "--configs",
                 'triton:{"BLOCK_M": 32, "BLOCK_N": 32}', "--rows", str(rows_path)])
    assert code == 0, capsys.readouterr().err
    got = sorted((r.backend, json.dumps(r.config, sort_keys=True), r.status)
                 for r in results.read_rows(rows_path))
    assert [(b, s) for b, _, s in got] == [("dense", "ok"), ("triton", "ok")]
    assert json.loads(got[1][1])["BLOCK_M"] == 32 and json.loads(got[0][1]) == {}


def test_tune_configs_names_a_backend_it_cannot_use(capsys):
    base = ["tune", "--layout", "causal", "--n-ctx", "256", "--backends", "dense", "--configs"]
    assert main(base + ['tritn:{"BLOCK_M": 32}']) == 2
    assert "no backend 'tritn'" in capsys.readouterr().err
    assert main(base + ['triton:{"BLOCK_M": 32}']) == 2
    assert "not in --backends dense: add it there" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own error: usage and one line
        main(base + ["triton:{BLOCK_M}"])
    assert exc.value.code == 2 and "'{BLOCK_M}' is not JSON" in capsys.readouterr().err
