"""The correctness gate: full and row-subset checks agree with the dense reference, catch a
wrong output or gradient, and handle permuted (strided) heads."""

import pytest
import torch

from stbench import backends, problems
from stbench.tuning import check


def _setup(name, mode, n=256, block=16, stride=16):
    spec = problems.LayoutSpec(name, name if name != "st_mix" else "st_mix", block=block,
                               params=(("stride", stride),) if name != "causal" else ())
    prob = problems.Problem(spec, n, 2, heads=2, head_dim=16, dtype="float32", mode=mode)
    layout = prob.build_layout()
    q, k, v = prob.inputs("cpu")
    return prob, layout, q, k, v


def _dense(layout, scale, damage=None):
    dense = backends.load("dense")

    def run(q, k, v):
        out = dense.attention(q, k, v, layout, scale)
        return damage(out) if damage else out
    return run


@pytest.mark.parametrize("name", ["causal", "strided", "st_mix"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_rows_check_accepts_the_reference_and_rejects_damage(name, mode):
    prob, layout, q, k, v = _setup(name, mode)
    scale = prob.head_dim ** -0.5
    for rows in (None, 40):
        ref = check.Reference(q, k, v, layout, scale, mode, rows=rows)
        assert ref.check == ("full" if rows is None else "rows:48")  # 3 blocks of 16
        ok = ref.check_backend(_dense(layout, scale))
        assert ok.ok and ok.err <= 1e-5, ok
        bad = ref.check_backend(_dense(layout, scale, lambda o: o * 1.01))
        assert not bad.ok and "rel_err" in bad.message()


def test_rows_check_sees_a_wrong_row_in_a_checked_block():
    prob, layout, q, k, v = _setup("strided", "fwd")
    scale = prob.head_dim ** -0.5
    ref = check.Reference(q, k, v, layout, scale, "fwd", rows=40)
    h, r = 1, int(ref.rows[1, 5])  # an original query index of head 1 that is checked

    def damage(out):
        out = out.clone()
        out[:, h, r] += 1.0
        return out
    assert not ref.check_backend(_dense(layout, scale, damage)).ok


def test_check_blocks_include_first_and_last():
    prob, layout, *_ = _setup("causal", "fwd")
    blocks = check.check_blocks(layout, 40, torch.Generator().manual_seed(0))
    assert blocks[0] == 0 and blocks[-1] == layout.n_blocks - 1 and blocks.numel() == 3


def test_block_row_mask_matches_the_layout():
    _, layout, *_ = _setup("st_mix", "fwd")
    keys = check._entry_keys(layout)
    for h in range(layout.heads):
        for qb in (0, 7, layout.n_blocks - 1):
            b = layout.block
            assert torch.equal(check.block_row_mask(layout, keys, h, qb),
                               layout.layout_order_rows(h, qb * b, qb * b + b))
