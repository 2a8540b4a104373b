"""``stbench model table2`` (the paper's Table 2 in miniature, for the GPU) runs end to end on
the CPU with --smoke: every pattern trains, is evaluated, and lands in the JSONL, table and plot;
a second run into the same folder is refused with one line."""

import json

from stbench.cli import main


def test_table2_smoke(tmp_path, capsys):
    assert main(["model", "table2", "--smoke", "--out", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "table2.jsonl").read_text().splitlines()]
    assert [r["pattern"] for r in rows] == ["dense", "fixed", "strided"]
    for r in rows:
        assert r["steps"] == 2 and 6.0 < r["val_bpb"] < 9.0
        assert r["model_config"]["attention"] == r["pattern"]
        assert (tmp_path / r["pattern"] / "checkpoint.pt").is_file()
        assert r["env"]["torch"]
    assert rows[2]["layout_density"][1] < rows[0]["layout_density"][1]  # strided is sparser
    assert "| strided |" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["model", "table2", "--smoke", "--out", str(tmp_path)]) == 2  # never mixes runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fresh folder" in err[0]
