"""``stbench model table2`` (the paper's Table 2, fairly, for the GPU) runs end to end on the
CPU with --smoke: per pattern a learning-rate trial per grid value, the final run at the best,
evaluated on the validation and test splits, the convergence rule applied, all landing in the
JSONL, the table (with its verdicts) and the plot; --resume adds patterns run with the same
settings; a second run into the same folder is refused with one line."""

import json

import pytest

from stbench.cli import main
from stbench.commands import model_table2


def test_flatness_is_the_relative_spread_over_the_last_fifth():
    evals = [{"step": s, "bpd": b} for s, b in ((10, 3.0), (80, 2.02), (90, 2.01), (100, 2.0))]
    assert model_table2.flatness(evals, 100) == pytest.approx(0.01)
    assert model_table2.flatness(evals[:2], 100) is None  # one evaluation in the tail


def test_table2_smoke(tmp_path, capsys):
    smoke = ["model", "table2", "--smoke", "--out", str(tmp_path)]
    assert main(smoke + ["--patterns", "dense,fixed"]) == 0
    first = (tmp_path / "table2.jsonl").read_text()
    assert main(smoke + ["--resume"]) == 0  # adds strided, keeps dense and fixed
    assert (tmp_path / "table2.jsonl").read_text().startswith(first)
    rows = [json.loads(x) for x in (tmp_path / "table2.jsonl").read_text().splitlines()]
    assert [r["pattern"] for r in rows] == ["dense", "fixed", "strided"]
    for r in rows:
        assert r["steps"] == 5 and r["equal_tokens"] and r["tokens"] == 5 * 2 * 256
        assert set(r["lr_trials"]) == {"0.001", "0.003"} and r["lr"] in (1e-3, 3e-3)
        assert r["lr_trials"][f"{r['lr']:g}"] == min(r["lr_trials"].values())
        assert 5.0 < r["val_bpb"] < 9.0 and 5.0 < r["test_bpb"] < 9.0
        assert r["flatness"] is not None and r["converged"] == (r["flatness"] <= 0.01)
        assert r["model_config"]["attention"] == r["pattern"]
        assert (tmp_path / r["pattern"] / "checkpoint.pt").is_file()
        assert (tmp_path / r["pattern"] / "lr-0.001" / "log.jsonl").is_file()
        assert r["env"]["torch"] and r["world_size"] == 1
    assert rows[2]["layout_density"][1] < rows[0]["layout_density"][1]  # strided is sparser
    table = (tmp_path / "table2.md").read_text()
    assert "| strided |" in table and "fixed no worse than dense" in table
    assert "converged by the rule" in table
    assert (tmp_path / "curves.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(smoke) == 2  # never mixes runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fresh folder" in err[0]
    assert main(smoke + ["--resume", "--seed", "1"]) == 2  # a fair table has one setting
    assert "other settings" in capsys.readouterr().err
