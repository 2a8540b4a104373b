"""The paper's generators against slow, obvious constructions written from DESIGN.md's formulas."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stbench import layouts
from stbench.layouts import LayoutError

from layout_checks import assert_exact  # noqa: E402  (tests/layouts/layout_checks.py)


def grid(n):
    q = torch.arange(n).view(-1, 1)
    k = torch.arange(n).view(1, -1)
    return q, k


@pytest.mark.parametrize("n,block,heads", [(128, 16, 1), (256, 32, 2), (256, 128, 1), (512, 64, 3)])
def test_causal(n, block, heads):
    q, k = grid(n)
    assert_exact(layouts.causal(n, block, heads), (k <= q).expand(heads, n, n))


@pytest.mark.parametrize(
    "n,block,window,heads", [(256, 16, 40, 2), (256, 32, 32, 1), (512, 64, 1, 1), (256, 16, 300, 1),
                             (512, 128, 200, 2)]
)
def test_local(n, block, window, heads):
    q, k = grid(n)
    expected = ((k <= q) & (q - k < window)).expand(heads, n, n)
    assert_exact(layouts.local(n, block=block, window=window, heads=heads), expected)


@pytest.mark.parametrize(
    "n,block,stride,heads", [(512, 16, 16, 2), (512, 16, 32, 1), (1024, 32, 16, 2), (256, 16, 1, 1),
                             (2048, 128, 16, 1)]
)
def test_strided(n, block, stride, heads):
    q, k = grid(n)
    expected = ((k <= q) & ((q - k) % stride == 0)).expand(heads, n, n)
    L = layouts.strided(n, block=block, stride=stride, heads=heads)
    assert_exact(L, expected)
    # in layout order: block-diagonal causal with chunks of N/l tokens
    c = n // stride
    i, j = grid(n)
    lay = (i // c == j // c) & (j <= i)
    assert torch.equal(L.layout_order_rows(0, 0, n), lay)
    assert torch.equal(L.perm_of_head(0)[torch.arange(n)], (torch.arange(n) % c) * stride
                       + torch.arange(n) // c)


@pytest.mark.parametrize(
    "n,block,stride,heads,num_verts,vertsize",
    [(512, 16, 64, 1, 1, 1), (512, 16, 64, 4, 2, 1), (512, 16, 64, 4, 2, 2), (1024, 32, 128, 3, 1, 2),
     (512, 16, 128, 4, 4, 2), (1024, 64, 128, 2, 2, 1), (256, 16, 16, 1, 1, 1), (1024, 128, 256, 1, 1, 2),
     (576, 32, 128, 2, 2, 1), (96, 16, 64, 1, 1, 1)],  # N not a multiple of the stride
)
def test_fixed(n, block, stride, heads, num_verts, vertsize):
    q, k = grid(n)
    c = vertsize * block
    exp = []
    for h in range(heads):
        hp = h % num_verts
        summary = (stride - (hp + 1) * c <= k % stride) & (k % stride < stride - hp * c)
        exp.append((k <= q) & ((q // stride == k // stride) | summary))
    L = layouts.fixed(n, block=block, stride=stride, heads=heads, num_verts=num_verts,
                      vertsize=vertsize)
    assert_exact(L, torch.stack(exp))
    # the released code's block construction
    s, nb = stride // block, n // block
    idx = torch.arange(s - 1, -1, -1).reshape(-1, vertsize)
    bm = torch.zeros(heads, nb, nb, dtype=torch.bool)
    for h in range(heads):
        for col in idx[h % num_verts].tolist():
            bm[h, :, col::s] = True
        for qb in range(nb):
            bm[h, qb, (qb // s) * s:(qb // s + 1) * s] = True
    assert torch.equal(L.block_mask, bm & torch.ones(nb, nb, dtype=torch.bool).tril())
    assert L.name == f"fixed(l={stride},c={c}" + (f",v={num_verts})" if num_verts > 1 else ")")


@pytest.mark.parametrize(
    "n,block,stride,heads", [(512, 16, 64, 1), (512, 16, 40, 2), (256, 32, 16, 1), (512, 128, 64, 1),
                             (512, 16, 7, 1), (256, 64, 128, 1), (576, 32, 100, 1)]
)
def test_merged_strided(n, block, stride, heads):
    q, k = grid(n)
    d = q - k
    expected = ((d >= 0) & ((d < stride) | (d % stride == 0))).expand(heads, n, n)
    assert_exact(layouts.merged_strided(n, block=block, stride=stride, heads=heads), expected)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: layouts.causal(100, 16), "n_ctx"),
        (lambda: layouts.causal(128, 24), "block"),
        (lambda: layouts.causal(128, 16, heads=0), "heads"),
        (lambda: layouts.local(128, 16, window=0), "window"),
        (lambda: layouts.strided(512, 16, stride=3), "stride"),
        (lambda: layouts.strided(512, 32, stride=32), "block"),
        (lambda: layouts.fixed(512, 16, stride=40), "stride"),
        (lambda: layouts.fixed(512, 16, stride=64, heads=3, num_verts=2), "num_verts"),
        (lambda: layouts.fixed(512, 16, stride=64, vertsize=3), "vertsize"),
        (lambda: layouts.fixed(512, 16, stride=64, heads=4, num_verts=4, vertsize=2), "num_verts"),
        (lambda: layouts.merged_strided(512, 16, stride=0), "stride"),
    ],
)
def test_bad_parameters_name_the_parameter(call, word):
    with pytest.raises(LayoutError, match=word):
        call()


def test_identical_heads_are_stored_once():
    L = layouts.fixed(2048, 16, 128, heads=8, num_verts=2)
    assert L.n_patterns == 2 and L.head_pattern == (0, 1) * 4
    per_head = L.pat_ptr[1] - L.pat_ptr[0]
    assert L.pat_q.numel() == L.pat_ptr[-1] and L.nnz == 4 * L.pat_ptr[-1]
    # the per-head view is materialised on demand and agrees with the patterns
    for h in range(8):
        s, e = L.head_ranges[h]
        assert e - s == L.head_sizes[h]
        assert bool((L.heads_idx[s:e] == h).all())
        for got, want in zip((L.q_blocks, L.k_blocks, L.kinds, L.mask_ids), L.head_entries(h)):
            assert torch.equal(got[s:e], want)
    assert per_head > 0
    # from_parts with the per-head arrays finds the same sharing and the same hash
    again = type(L).from_parts(L.n_ctx, L.heads, L.block, L.name, L.heads_idx, L.q_blocks,
                               L.k_blocks, L.kinds, L.mask_ids, L.masks)
    assert again.n_patterns == 2 and again == L


def test_large_n_is_fast_and_small():
    """N = 2^20 at block 128: one stored pattern, O(non-empty blocks) memory."""
    L = layouts.merged_strided(1 << 20, block=128, stride=1024, heads=8)
    assert L.n_patterns == 1 and L.masks.shape[0] <= 3
    assert L.pat_q.numel() == L.nnz // 8


def fixed_count(n, b, l):
    """Blocks per head of fixed(l, vertsize 1): C s(s+1)/2 window + s C(C-1)/2 summary blocks."""
    s, nb = l // b, n // b
    c = nb // s
    return c * s * (s + 1) // 2 + s * (c * (c - 1) // 2)


def merged_count(n, b, l):
    """Blocks per head of merged_strided (l % b == 0): the local offsets 0..(l+b-2)//b, then one
    offset per further multiple of l, each present in rows qb >= d."""
    nb, last, step = n // b, (l + b - 2) // b, l // b
    qb = torch.arange(nb)
    strides = (qb // step - (last // step + 1) + 1).clamp(min=0)
    return int((qb.clamp(max=last) + 1 + strides).sum())


@pytest.mark.parametrize("n,b,l", [(1 << 16, 16, 256), (1 << 16, 128, 128), (1 << 16, 16, 128),
                                   (1 << 14, 32, 64), (1 << 14, 16, 1024)])
def test_block_count_formulas(n, b, l):
    """The arithmetic of docs/plan_benchmark.md, checked against the generators."""
    assert layouts.fixed(n, b, l).nnz == fixed_count(n, b, l)
    assert layouts.merged_strided(n, b, l).nnz == merged_count(n, b, l)
    assert fixed_count(1 << 20, 16, 1024) == 35_651_584
    assert fixed_count(1 << 20, 128, 1024) == 4_227_072


@st.composite
def paper_params(draw):
    block = draw(st.sampled_from([16, 32, 64, 128]))
    n = block * draw(st.integers(1, 8))
    return n, block, draw(st.integers(1, 3))


@settings(max_examples=30, deadline=None)
@given(paper_params(), st.integers(1, 300), st.data())
def test_paper_generators_random_parameters(params, l, data):
    """local / merged_strided at any window or stride; strided and fixed wherever valid."""
    n, block, heads = params
    q = torch.arange(n).view(-1, 1)
    k = torch.arange(n).view(1, -1)
    d = q - k
    assert_exact(layouts.local(n, block, l, heads), ((d >= 0) & (d < l)).expand(heads, n, n))
    assert_exact(layouts.merged_strided(n, block, l, heads),
                 ((d >= 0) & ((d < l) | (d % l == 0))).expand(heads, n, n))
    divisors = [x for x in range(1, n + 1) if n % x == 0 and (n // x) % block == 0]
    sl = data.draw(st.sampled_from(divisors))
    assert_exact(layouts.strided(n, block, sl, heads), ((d >= 0) & (d % sl == 0)).expand(heads, n, n))
    fl = block * data.draw(st.integers(1, 4))
    s = fl // block
    vs = data.draw(st.sampled_from([v for v in range(1, s + 1) if s % v == 0]))
    nv = data.draw(st.sampled_from([v for v in range(1, s // vs + 1) if heads % v == 0] or [1]))
    c = vs * block
    exp = torch.stack([(k <= q) & ((q // fl == k // fl) | ((fl - (h % nv + 1) * c <= k % fl)
                                                          & (k % fl < fl - (h % nv) * c)))
                       for h in range(heads)])
    assert_exact(layouts.fixed(n, block, fl, heads, nv, vs), exp)
