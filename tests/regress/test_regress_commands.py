"""stbench ab / regress as a user calls them: --help, one-line errors with exit code 2, and ab
end to end on the CPU between two dense-backed kernel trees (A/A passes; a planted wrong answer
and a planted slowdown fail with exit code 1, named in the JSON and the Markdown)."""

from __future__ import annotations

import json

import pytest
from regress_stubs import write_fake_tree

from stbench import cli
from stbench.regress import plant

TINY = ["--backends", "triton", "--layouts", "causal", "--ns", "128", "--batch", "1",
        "--heads", "2", "--head-dim", "16", "--dtype", "float32", "--warmup-ms", "0",
        "--rep-ms", "2", "--width", "200"]


@pytest.mark.parametrize("command", ["ab", "regress"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["ab", "--base=-x"], "must name a git revision"),
    (["ab", "--base-dir", "/nonexistent/tree"], "no kernels/__init__.py"),
    (["ab", "--base", "HEAD", "--backends", "sdpa"], "peer"),
    (["ab", "--base", "HEAD", "--backends", "nosuch"], "not registered"),
    (["ab", "--base", "HEAD", "--layouts", "nosuch"], "not a known spec"),
    (["ab", "--base", "HEAD", "--ns", "12,x"], "--ns"),
    (["ab", "--base", "HEAD", "--modes", "bwd"], "--modes"),
    (["ab", "--base", "HEAD", "--rounds", "0"], "rounds"),
    (["ab", "--base", "HEAD", "--threshold", "-1"], "threshold"),
    (["ab", "--base", "HEAD", "--dtype", "int8"], "--dtype"),
    (["ab", "--base", "HEAD", "--rep-ms", "0"], "--rep-ms"),
    (["regress"], "needs a CUDA GPU"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, match, capsys):
    if argv == ["regress"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err


def _ab(tmp_path, head, base, *extra):
    js, md = tmp_path / "ab.json", tmp_path / "ab.md"
    code = cli.main(["ab", "--base-dir", str(base), "--head-dir", str(head), *TINY,
                     "--json", str(js), "--markdown", str(md), *extra])
    return code, json.loads(js.read_text()), md.read_text()


def test_ab_a_a_passes(tmp_path):
    tree = write_fake_tree(tmp_path / "t")
    code, doc, md = _ab(tmp_path, tree, tree, "--modes", "fwd,fwd+bwd", "--rounds", "2",
                        "--threshold", "100")
    assert code == 0
    assert [r["verdict"] for r in doc["results"]] == ["same", "same"]
    assert doc["settings"]["rounds"] == 2 and doc["env"]["torch"]
    assert "this tree's layouts" in md and "2 same" in md


def test_ab_catches_a_planted_wrong_answer(tmp_path):
    base = write_fake_tree(tmp_path / "t")
    head = plant.write_planted(base, tmp_path / "wrong", "triton", "drop-block")
    code, doc, md = _ab(tmp_path, head, base, "--modes", "fwd", "--rounds", "2")
    assert code == 1
    assert doc["results"][0]["verdict"] == "wrong" and "rel_err" in doc["results"][0]["reason"]
    assert "**WRONG**" in md


def test_ab_catches_a_planted_slowdown(tmp_path):
    base = write_fake_tree(tmp_path / "t")
    head = plant.write_planted(base, tmp_path / "slow", "triton", "slow:9")
    code, doc, md = _ab(tmp_path, head, base, "--modes", "fwd", "--rounds", "3")
    r = doc["results"][0]
    assert code == 1 and r["verdict"] == "slower" and r["ratio"] > 3, r
    assert "**SLOWER**" in md
