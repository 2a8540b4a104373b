"""The 192-row forward's tile lists (kernels/gluon/union.py) on the CPU: the pairs they make the
kernel compute are exactly the layout's, for every pattern, at block counts that 3 divides and
that it does not (the last CTA's rows past N), and the entries FULL on both sides come first."""

from __future__ import annotations

import pytest
import torch

from stbench import layouts
from stbench.kernels.gluon.union import TILE_NONE, token_mask, union_tiles
from stbench.kernels.triton.tiles import TILE_FULL, build_tiles
from stbench.layouts import plan_for

LAYOUTS = [
    layouts.causal(1152, block=128, heads=2),  # 9 blocks: 3 divides
    layouts.causal(1024, block=128, heads=2),  # 8: the last CTA's third warpgroup past N
    layouts.causal(896, block=128, heads=1),  # 7: its second and third past N
    layouts.fixed(2048, block=128, stride=512, heads=2),
    layouts.local(1536, block=128, window=300, heads=1),  # a token window: MASKED tiles
    layouts.bigbird(1536, block=128, heads=3, different_layout_per_head=True, seed=0),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay.name}-{lay.n_ctx}")
def test_union_lists_compute_exactly_the_layout(layout):
    plan = plan_for(layout, "cpu")
    u = union_tiles(build_tiles(plan, 128, 128))
    want = layout.token_mask()
    for h in range(layout.heads):
        got = token_mask(u, int(plan.head_pattern[h]))
        assert torch.equal(got, want[h]), (layout.name, h)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay.name}-{lay.n_ctx}")
def test_union_lists_put_full_entries_first_in_key_order(layout):
    u = union_tiles(build_tiles(plan_for(layout, "cpu"), 128, 128))
    both_full = (u.kinds[0] == TILE_FULL) & (u.kinds[1] == TILE_FULL)
    for p in range(u.ptr.shape[0]):
        for c in range(u.n_tiles):
            a, b, f = int(u.ptr[p, c]), int(u.ptr[p, c + 1]), int(u.split[p, c, 0])
            assert a <= f <= b and int(u.split[p, c, 1]) == f
            assert both_full[a:f].all() and not both_full[f:b].any()
            for lo, hi in ((a, f), (f, b)):  # each part in key order, no key twice
                part = u.cols[lo:hi]
                assert torch.all(part[1:] > part[:-1])
            # every entry has work on some side
            assert ((u.kinds[0, a:b] != TILE_NONE) | (u.kinds[1, a:b] != TILE_NONE)).all()


def test_union_refuses_other_tiles():
    plan = plan_for(layouts.causal(1024, block=128, heads=1), "cpu")
    with pytest.raises(ValueError, match="128 x 128"):
        union_tiles(build_tiles(plan, 64, 128))
