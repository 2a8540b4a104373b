"""Kernel trees side by side: a tree imported under its own alias (its custom ops renamed), the
repository's own kernels from a folder and from a git revision, and one-line errors: no tree,
no revision, a backend the tree lacks, a tree that needs another plan."""

from __future__ import annotations

import shutil

import pytest
import torch
from regress_stubs import write_fake_tree

from stbench import backends, layouts
from stbench.reference import dense
from stbench.regress import trees


def test_a_tree_loads_under_its_own_alias_with_its_own_op_namespace(tmp_path):
    with trees.KernelTree.from_dir(write_fake_tree(tmp_path / "base")) as tree:
        mod = tree.module("triton")
        assert mod.__name__ == f"{tree.alias}.triton.backend"
        assert tree.module("triton") is mod  # imported once
        assert hasattr(getattr(torch.ops, tree.alias), "fake_tree_op")
        assert not hasattr(torch.ops.stbench, "fake_tree_op")
        lay = layouts.causal(64, block=16, heads=2)
        q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
        assert torch.equal(mod.attention(q, k, v, lay, 0.25), dense.attention(q, k, v, lay, 0.25))
        alias = tree.alias
    assert not any(m.startswith(alias) for m in list(__import__("sys").modules))


def test_two_trees_do_not_share_modules(tmp_path):
    a = trees.KernelTree.from_dir(write_fake_tree(tmp_path / "a"))
    b = trees.KernelTree.from_dir(write_fake_tree(tmp_path / "b"))
    try:
        assert a.alias != b.alias
        assert a.module("triton") is not b.module("triton")
    finally:
        a.close()
        b.close()


def test_the_repository_kernels_load_from_a_folder():
    with trees.KernelTree.from_dir(trees.repo_root()) as tree:
        mod = tree.module("triton")
        assert mod is not backends.load("triton")
        assert mod.default_config is not None


def test_the_repository_kernels_load_from_a_revision():
    if trees.git(["rev-parse", "--git-dir"], trees.repo_root()).returncode != 0:
        pytest.skip("not a git checkout")
    tree = trees.KernelTree.from_revision("HEAD")
    folder = tree.kernels_dir
    assert (folder / "triton" / "backend.py").is_file()
    tree.module("triton")
    tree.close()
    assert not folder.exists()  # the extracted files are removed


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(trees.TreeError, match="no kernels/__init__.py"):
        trees.KernelTree.from_dir(tmp_path)
    with pytest.raises(trees.TreeError, match="must name a git revision"):
        trees.resolve_revision("--upload-pack=x")
    if trees.git(["rev-parse", "--git-dir"], trees.repo_root()).returncode == 0:
        with pytest.raises(trees.TreeError, match="no such revision"):
            trees.resolve_revision("no-such-branch-anywhere")
    with pytest.raises(trees.TreeError, match="not a git checkout"):
        trees.resolve_revision("HEAD", tmp_path)


def test_a_backend_missing_from_the_tree_is_unavailable(tmp_path):
    with trees.KernelTree.from_dir(write_fake_tree(tmp_path / "t")) as tree:
        with pytest.raises(backends.BackendUnavailable, match="kernels/cupy"):
            tree.module("cupy")
        with pytest.raises(ValueError, match="peer"):
            tree.module("flex")


def test_a_tree_needing_another_plan_says_so_in_one_line(tmp_path):
    source = "from stbench.layouts.plan import PlanFormatThatDoesNotExist\n"
    with trees.KernelTree.from_dir(write_fake_tree(tmp_path / "t", source)) as tree:
        with pytest.raises(trees.PlanMismatch, match="layouts/plan") as info:
            tree.module("triton")
    assert "\n" not in str(info.value)


def test_a_broken_tree_package_is_one_line(tmp_path):
    root = write_fake_tree(tmp_path / "t")
    (root / "kernels" / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    with pytest.raises(trees.TreeError, match="broken on purpose"):
        trees.KernelTree.from_dir(root)


def test_kernels_dir_of_accepts_a_checkout_or_its_kernels_folder(tmp_path):
    root = write_fake_tree(tmp_path / "t")
    assert trees.kernels_dir_of(root) == root / "kernels"
    assert trees.kernels_dir_of(root / "kernels") == root / "kernels"
    shutil.rmtree(root / "kernels")
    with pytest.raises(trees.TreeError):
        trees.kernels_dir_of(root)
