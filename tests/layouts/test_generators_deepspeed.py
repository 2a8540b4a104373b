"""DeepSpeed-style generators against slow loops written from DeepSpeed's config meanings."""

import pytest
import torch

from stbench import layouts
from stbench.layouts import LayoutError
from stbench.layouts.generators.deepspeed import _random_pairs

from layout_checks import assert_exact


def expand(bm, block, causal):
    """Block mask [H, nb, nb] -> token mask, with the causal rule k <= q when causal."""
    t = bm.repeat_interleave(block, 1).repeat_interleave(block, 2)
    if causal:
        n = t.shape[1]
        t = t & torch.ones(n, n, dtype=torch.bool).tril()
    return t


def slow_window(nb, wb, causal):
    bm = torch.zeros(nb, nb, dtype=torch.bool)
    w = wb // 2
    for r in range(nb):
        bm[r, max(0, r - w):(r + 1 if causal else min(r + w + 1, nb))] = True
    return bm


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("nb,block,wb,heads", [(8, 16, 3, 2), (6, 32, 4, 1), (5, 16, 1, 1), (8, 64, 8, 1)])
def test_sliding_window(nb, block, wb, heads, causal):
    L = layouts.sliding_window(nb * block, block, heads, wb, causal)
    assert_exact(L, expand(slow_window(nb, wb, causal).expand(heads, nb, nb), block, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("starts,ends", [([0], None), ([0, 5], None), ([1, 6], [3, 8]), ([20], None)])
def test_longformer(starts, ends, causal):
    nb, block, wb = 10, 16, 3
    bm = slow_window(nb, wb, False)
    ranges = [(s, s + 1) for s in starts] if ends is None else list(zip(starts, ends))
    for s, e in ranges:
        if s < nb:
            bm[s:min(e, nb), :] = True
            bm[:, s:min(e, nb)] = True
    L = layouts.longformer(nb * block, block, 2, wb, starts, ends, causal)
    assert_exact(L, expand(bm.expand(2, nb, nb), block, causal))


@pytest.mark.parametrize("causal", [True, False])
def test_bigbird_without_random_and_with(causal):
    nb, block, g = 9, 16, 2
    bm = slow_window(nb, 3, False)
    bm[:g, :] = True
    bm[:, :g] = True
    L = layouts.bigbird(nb * block, block, 2, num_random_blocks=0, num_global_blocks=g,
                        causal=causal)
    assert_exact(L, expand(bm.expand(2, nb, nb), block, causal))
    R = layouts.bigbird(nb * block, block, 2, num_random_blocks=2, num_global_blocks=g,
                        causal=causal, seed=3)
    assert torch.equal(R.block_mask & L.block_mask, L.block_mask)  # random blocks only add
    extra = (R.block_mask & ~L.block_mask).sum(-1)
    assert int(extra.max()) <= 2
    assert R == layouts.bigbird(nb * block, block, 2, num_random_blocks=2, num_global_blocks=g,
                                causal=causal, seed=3)
    assert torch.equal(R.block_mask[0], R.block_mask[1])  # shared draw by default
    D = layouts.bigbird(64 * block, block, 2, num_random_blocks=3, causal=causal, seed=3,
                        different_layout_per_head=True)
    assert not torch.equal(D.block_mask[0], D.block_mask[1])
    with pytest.raises(LayoutError, match="seed"):
        layouts.bigbird(nb * block, block, 2, num_random_blocks=1)


@pytest.mark.parametrize("causal", [True, False])
def test_random_pairs_are_distinct_and_in_range(causal):
    g = torch.Generator().manual_seed(0)
    nb, r = 40, 5
    q, k = _random_pairs(nb, r, causal, g)
    counts = torch.bincount(q, minlength=nb)
    pool = torch.arange(nb) + 1 if causal else torch.full((nb,), nb)
    assert torch.equal(counts, pool.clamp(max=r))
    assert torch.unique(q * nb + k).numel() == q.numel()
    assert bool((k < pool[q]).all()) and bool((k >= 0).all())


def slow_variable(nb, sizes, starts, ends, horizontal, causal):
    bm = torch.zeros(nb, nb, dtype=torch.bool)
    s = 0
    for size in sizes:
        e = min(s + size, nb)
        for r in range(s, e):
            bm[r, s:(r + 1 if causal else e)] = True
        s += size
    for i in range(s, nb, sizes[-1]):
        e = min(i + sizes[-1], nb)
        for r in range(i, e):
            bm[r, i:(r + 1 if causal else e)] = True
    ranges = [(x, x + 1) for x in starts] if ends is None else list(zip(starts, ends))
    for a, e in ranges:
        if a < nb:
            e = min(e, nb)
            if horizontal:
                bm[a:e, :] = True
            bm[(a if causal else 0):, a:e] = True
    return bm


@pytest.mark.parametrize(
    "sizes,starts,ends,horizontal,causal",
    [([4], [0], None, False, True), ([2, 3], [0, 7], None, False, True),
     ([1, 4], [2], [4], True, False), ([3], [0, 20], None, False, False), ([20], [0], None, False, True)],
)
def test_variable(sizes, starts, ends, horizontal, causal):
    nb, block = 11, 16
    bm = slow_variable(nb, sizes, starts, ends, horizontal, causal)
    L = layouts.variable(nb * block, block, 3, 0, sizes, starts, ends, horizontal, causal)
    assert_exact(L, expand(bm.expand(3, nb, nb), block, causal))


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: layouts.sliding_window(128, 16, 1, 0), "num_sliding_window_blocks"),
        (lambda: layouts.sliding_window(128, 16, 1, 3, causal="yes"), "causal"),
        (lambda: layouts.bigbird(128, 16, 1, num_random_blocks=9, seed=0), "num_random_blocks"),
        (lambda: layouts.longformer(128, 16, 1, 3, [0, 2], [1]), "global_block_end_indices"),
        (lambda: layouts.longformer(128, 16, 1, 3, [2], [2]), "start"),
        (lambda: layouts.variable(128, 16, 1, horizontal_global_attention=True), "causal=False"),
        (lambda: layouts.variable(128, 16, 1, local_window_blocks=[]), "local_window_blocks"),
        (lambda: layouts.variable(128, 16, 1, num_random_blocks=1), "seed"),
    ],
)
def test_deepspeed_errors(call, word):
    with pytest.raises(LayoutError, match=word):
        call()
