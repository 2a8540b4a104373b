"""scripts/gpu_table2.py (the paper's Table 2 in miniature, for the GPU) runs end to end on the
CPU with --smoke: every pattern trains, is evaluated, and lands in the JSONL, table and plot."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_table2.py"


def test_table2_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_table2", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "table2.jsonl").read_text().splitlines()]
    assert [r["pattern"] for r in rows] == ["dense", "fixed", "strided"]
    for r in rows:
        assert r["steps"] == 2 and 6.0 < r["val_bpb"] < 9.0
        assert r["model_config"]["attention"] == r["pattern"]
        assert (tmp_path / r["pattern"] / "checkpoint.pt").is_file()
    assert rows[2]["layout_density"][1] < rows[0]["layout_density"][1]  # strided is sparser
    assert "| strided |" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="fresh folder"):  # never mixes two runs
        mod.main(["--smoke", "--out", str(tmp_path)])
