"""Exact split of the paper's merged strided head into two cheap parts (opt-in: ``split_union``).

The merged head ``k <= q and (q - k < l or (q - k) % l == 0)`` has no good block form in the
original token order: at block 16 its stride part is one diagonal line per 16 x 16 block, so a
block kernel computes 16x the allowed pairs, and any query tile wider than l / 16 blocks
gathers every earlier key block. It is the disjoint union of

    local   k <= q and q - k < l                 (original order: a narrow band)
    stride  (q - k) % l == 0 and q - k >= l      (after the strided transpose: block-diagonal
                                                  causal chunks of N / l tokens, diagonal excluded)

and softmax over a disjoint union is exact from two partial softmaxes merged by their
log-sum-exps: with (o1, lse1), (o2, lse2) of the parts,
``lse = logaddexp(lse1, lse2)``, ``o = o1 exp(lse1 - lse) + o2 exp(lse2 - lse)``. The backward
of each part, recomputing probabilities from the merged lse and delta = rowsum(dO * O), gives
that part's share of dQ, dK, dV; the shares add (second launch accumulates, no atomics).

``split_merged_strided`` recognises the layout exactly: it guesses l from one row of the mask
and then checks content equality with ``layouts.merged_strided(N, block, l, heads)``; anything
else is left whole (None).
"""

from __future__ import annotations

import functools

import torch

from stbench import layouts
from stbench.layouts import PARTIAL, Layout

LOCAL_BLOCKS = (64, 32, 16)  # the local part's block: the largest dividing N
STRIDE_BLOCKS = (128, 64, 32, 16)  # the stride part's block: the largest dividing N / l


def _strict(strided: Layout) -> Layout:
    """The strided layout with its causal-diagonal blocks made strictly lower (k < q)."""
    b = strided.block
    strict = torch.ones(b, b, dtype=torch.bool).tril(-1).unsqueeze(0)
    is_diag = strided.kinds == layouts.DIAG
    kinds = torch.where(is_diag, torch.full_like(strided.kinds, PARTIAL), strided.kinds)
    mask_ids = torch.where(is_diag, torch.zeros_like(strided.mask_ids), strided.mask_ids)
    return Layout.from_parts(
        strided.n_ctx, strided.heads, b, strided.name + "_strict", strided.heads_idx,
        strided.q_blocks, strided.k_blocks, kinds, mask_ids, strict, strided.perms,
        strided.head_perm,
    )


@functools.lru_cache(maxsize=32)
def split_merged_strided(layout: Layout) -> tuple[Layout, Layout] | None:
    """(local part, strict stride part) if ``layout`` is exactly merged_strided(l), else None."""
    n, heads = layout.n_ctx, layout.heads
    if layout.perms is not None or n < 4:
        return None
    row = layout.token_mask_rows(0, torch.tensor([n - 1]))[0]  # keys of the last query
    allowed = torch.zeros(n, dtype=torch.bool)
    allowed[(n - 1) - row.nonzero().flatten()] = True  # allowed q - k
    missing = (~allowed).nonzero().flatten()
    if missing.numel() == 0:
        return None
    stride = int(missing[0]) - 1  # deltas 0 .. l - 1 (local) and l (a multiple) are allowed
    if stride < 2 or n % stride:
        return None
    chunk = n // stride
    bs = next((b for b in STRIDE_BLOCKS if chunk % b == 0), None)
    bl = next((b for b in LOCAL_BLOCKS if n % b == 0), None)
    if bs is None or bl is None:
        return None
    try:
        same = layouts.merged_strided(n, block=layout.block, stride=stride, heads=heads) == layout
    except layouts.LayoutError:
        return None
    if not same:
        return None
    local = layouts.local(n, block=bl, window=stride, heads=heads)
    stride_part = _strict(layouts.strided(n, block=bs, stride=stride, heads=heads))
    return local, stride_part
