"""Planted faults in a copy of a kernel tree: the code of each fault, the copy (the source left
untouched), and their effect: drop-block and a poisoning config are wrong against dense,
slow:F makes every call slower."""

from __future__ import annotations

import time

import pytest
import torch
from regress_stubs import FAKE_BACKEND, write_fake_tree

from stbench import accuracy, layouts
from stbench.reference import dense
from stbench.regress import plant, trees

LAYOUT = layouts.causal(64, block=16, heads=2)


def inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 64, 16, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("fault, match", [("slow:0", "fraction"), ("slow:abc", "fraction"),
                                          ("config:[1]", "JSON object"), ("config:{", "JSON"),
                                          ("drop", "unknown")])
def test_bad_faults_are_named(fault, match):
    with pytest.raises(ValueError, match=match):
        plant.fault_code(fault)


def test_the_copy_is_planted_and_the_source_untouched(tmp_path):
    src = write_fake_tree(tmp_path / "src")
    out = plant.write_planted(src, tmp_path / "out", "triton", "drop-block")
    assert plant.MARK in (out / "kernels" / "triton" / "backend.py").read_text()
    assert (src / "kernels" / "triton" / "backend.py").read_text() == FAKE_BACKEND
    with pytest.raises(trees.TreeError, match="exists"):
        plant.write_planted(src, tmp_path / "out", "triton", "drop-block")


def test_drop_block_is_wrong_against_dense(tmp_path):
    out = plant.write_planted(write_fake_tree(tmp_path / "s"), tmp_path / "o", "triton",
                              "drop-block")
    q, k, v = inputs()
    ref = dense.attention(q, k, v, LAYOUT, 0.25)
    with trees.KernelTree.from_dir(out) as tree:
        got = tree.module("triton").attention(q, k, v, LAYOUT, 0.25)
    ok, err, tol = accuracy.within(got, ref, ref.to(torch.float32))
    assert not ok and err > 0.1
    assert torch.equal(got[0, 1], ref[0, 1])  # only head 0's first query block is hit


def test_config_fault_forces_the_configuration(tmp_path):
    out = plant.write_planted(write_fake_tree(tmp_path / "s"), tmp_path / "o", "triton",
                              'config:{"poison": true}')
    q, k, v = inputs()
    with trees.KernelTree.from_dir(out) as tree:
        got = tree.module("triton").attention(q, k, v, LAYOUT, 0.25, {"poison": False})
    assert float(got.abs().max()) == 0.0


def test_slow_fault_makes_each_call_slower_and_keeps_the_answer(tmp_path):
    fraction = 4.0
    out = plant.write_planted(write_fake_tree(tmp_path / "s"), tmp_path / "o", "triton",
                              f"slow:{fraction}")
    q, k, v = inputs()
    base = trees.KernelTree.from_dir(write_fake_tree(tmp_path / "b"))
    with trees.KernelTree.from_dir(out) as tree:
        slow, fast = tree.module("triton"), base.module("triton")
        slow.attention(q, k, v, LAYOUT, 0.25)  # measures the call's cost once

        def best(mod):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                mod.attention(q, k, v, LAYOUT, 0.25)
                times.append(time.perf_counter() - t)
            return min(times)

        assert best(slow) > 2 * best(fast)
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        got = slow.attention(qg, kg, vg, LAYOUT, 0.25)
        got.sum().backward()  # the backward hook spins and passes the gradient through
        assert torch.allclose(got, dense.attention(q, k, v, LAYOUT, 0.25))
        assert qg.grad is not None
    base.close()


def test_main_prints_the_folder_and_errors_in_one_line(tmp_path, capsys):
    src = write_fake_tree(tmp_path / "s")
    assert plant.main(["--fault", "drop-block", "--out", str(tmp_path / "o"), "--from",
                       str(src)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o")
    assert plant.main(["--fault", "nope", "--out", str(tmp_path / "p"), "--from",
                       str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plant: ") and err.count("\n") == 1
