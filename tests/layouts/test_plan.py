"""The device plan against the Layout's block list: CSR, transposed CSR, bitmasks, permutation,
shared patterns."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbench import layouts
from stbench.layouts import build_plan, plan_for
from stbench.layouts.plan import pack_masks, unpack_masks

from test_transforms import random_layouts  # noqa: E402  (tests/layouts is on sys.path)


def check_plan(L):
    P = build_plan(L)
    nb = L.n_blocks
    assert P.head_pattern.shape == (L.heads,)
    for h in range(L.heads):
        p = int(P.head_pattern[h])
        s, e = L.head_ranges[h]
        # forward lists
        lo, hi = int(P.row_ptr[p, 0]), int(P.row_ptr[p, nb])
        rows = torch.repeat_interleave(torch.arange(nb), (P.row_ptr[p, 1:] - P.row_ptr[p, :-1]).long())
        assert torch.equal(rows.int(), L.q_blocks[s:e])
        assert torch.equal(P.col_idx[lo:hi], L.k_blocks[s:e])
        assert torch.equal(P.col_kind[lo:hi], L.kinds[s:e])
        assert torch.equal(P.col_mask[lo:hi], L.mask_ids[s:e])
        # transposed lists: sorted by (key block, query block)
        key = L.k_blocks[s:e].long() * nb + L.q_blocks[s:e].long()
        order = torch.argsort(key)
        lo, hi = int(P.col_ptr[p, 0]), int(P.col_ptr[p, nb])
        cols = torch.repeat_interleave(torch.arange(nb), (P.col_ptr[p, 1:] - P.col_ptr[p, :-1]).long())
        assert torch.equal(cols.int(), L.k_blocks[s:e][order])
        assert torch.equal(P.row_idx[lo:hi], L.q_blocks[s:e][order])
        assert torch.equal(P.row_kind[lo:hi], L.kinds[s:e][order])
        assert torch.equal(P.row_mask[lo:hi], L.mask_ids[s:e][order])
        # permutation
        perm = L.perm_of_head(h)
        if perm is None:
            assert int(P.pattern_perm[p]) == -1
        else:
            row = int(P.pattern_perm[p])
            assert torch.equal(P.perm[row].long(), perm)
            assert torch.equal(P.inv_perm[row].long(), L.inverse_perm(h))
    assert torch.equal(unpack_masks(P.masks, L.block), L.masks)
    lens = P.row_ptr[:, 1:] - P.row_ptr[:, :-1]
    assert P.max_row_len == (int(lens.max()) if lens.numel() else 0)
    assert P.n_patterns == len(set(L.head_classes))
    return P


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_layouts())
def test_plan_matches_random_layouts(L):
    check_plan(L)


@pytest.mark.parametrize("make,patterns", [
    (lambda: layouts.fixed(2048, 16, 128, 8, 4, 1), 4),
    (lambda: layouts.fixed(2048, 32, 128, 8), 1),
    (lambda: layouts.st_mix(2048, 32, 32, 8), 2),
    (lambda: layouts.merged_strided(1024, 16, 64, 3), 1),
    (lambda: layouts.strided(1024, 16, 16, 2), 1),
    (lambda: layouts.bigbird(1024, 16, 4, seed=0, different_layout_per_head=True), 4),
    (lambda: layouts.causal(512, 64, 2), 1),
])
def test_plan_of_generators_shares_identical_heads(make, patterns):
    P = check_plan(make())
    assert P.n_patterns == patterns


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([16, 32, 64, 128]), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(block, m, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(m, block, block, generator=g) < 0.5
    packed = pack_masks(masks)
    assert packed.dtype == torch.int32 and packed.shape == (m, block, -(-block // 32))
    assert torch.equal(unpack_masks(packed, block), masks)
    # bit j % 32 of word j // 32 in row i
    i, j = 3, block - 1
    bit = (int(packed[0, i, j // 32]) >> (j % 32)) & 1
    assert bit == int(masks[0, i, j])


def test_plan_for_is_cached_by_content():
    a = layouts.fixed(1024, 16, 128, 2)
    b = layouts.fixed(1024, 16, 128, 2)
    assert a is not b and a == b
    assert plan_for(a) is plan_for(b)
