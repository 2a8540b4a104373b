"""Test layouts for the Triton backend tests, built only through the Layout type's own
constructors, each from an explicit seeded generator."""

from __future__ import annotations

import torch

from stbench.layouts import Layout


def random_block_layout(n_ctx, block, heads, density, gen, partial=True) -> Layout:
    """Random causal-ish block pattern: each lower block kept with prob ``density``; kept
    blocks are full, or (``partial``) a random token mask; some rows and columns end empty."""
    nb = n_ctx // block
    hh, qq, kk = torch.meshgrid(
        torch.arange(heads), torch.arange(nb), torch.arange(nb), indexing="ij"
    )
    keep = (torch.rand(hh.shape, generator=gen) < density) & (kk <= qq)
    keep[:, 0, :] = False  # an empty query-block row
    keep[:, :, nb - 1] = False  # an empty key-block column
    h, q, k = hh[keep], qq[keep], kk[keep]
    masks = torch.ones(h.numel(), block, block, dtype=torch.bool)
    if partial:
        rnd = torch.rand(h.numel(), block, block, generator=gen) < 0.5
        which = torch.rand(h.numel(), generator=gen) < 0.5
        masks[which] = rnd[which]
    diag = q == k
    masks[diag] &= torch.ones(block, block, dtype=torch.bool).tril()
    return Layout.from_block_masks(n_ctx, heads, block, "random_blocks", h, q, k, masks)


def random_token_layout(n_ctx, block, heads, density, gen) -> Layout:
    """A random exact token mask (not causal) with whole empty rows, via from_block_masks."""
    m = torch.rand(heads, n_ctx, n_ctx, generator=gen) < density
    m[:, 5:9, :] = False  # empty query rows
    m[:, :, 40:50] = False  # empty key columns
    nb = n_ctx // block
    blocks = m.reshape(heads, nb, block, nb, block).permute(0, 1, 3, 2, 4)
    hh, qq, kk = torch.meshgrid(
        torch.arange(heads), torch.arange(nb), torch.arange(nb), indexing="ij"
    )
    return Layout.from_block_masks(
        n_ctx, heads, block, "random_tokens", hh.reshape(-1), qq.reshape(-1), kk.reshape(-1),
        blocks.reshape(-1, block, block),
    )


def mixed_heads(*per_head: Layout) -> Layout:
    """One layout whose head i is the single-head layout ``per_head[i]`` (permutations kept)."""
    first = per_head[0]
    parts = {k: [] for k in ("h", "q", "k", "kind", "mid")}
    masks, perms, head_perm = [], [], []
    offset = 0
    for i, lay in enumerate(per_head):
        assert lay.heads == 1 and lay.n_ctx == first.n_ctx and lay.block == first.block
        parts["h"].append(torch.full_like(lay.heads_idx, i))
        parts["q"].append(lay.q_blocks)
        parts["k"].append(lay.k_blocks)
        parts["kind"].append(lay.kinds)
        parts["mid"].append(torch.where(lay.mask_ids >= 0, lay.mask_ids + offset, lay.mask_ids))
        masks.append(lay.masks)
        offset += lay.masks.shape[0]
        if lay.perms is not None and lay.head_perm[0] >= 0:
            perms.append(lay.perms[lay.head_perm[0]])
            head_perm.append(len(perms) - 1)
        else:
            head_perm.append(-1)
    return Layout.from_parts(
        first.n_ctx, len(per_head), first.block, "mixed",
        torch.cat(parts["h"]), torch.cat(parts["q"]), torch.cat(parts["k"]),
        torch.cat(parts["kind"]), torch.cat(parts["mid"]), torch.cat(masks),
        torch.stack(perms) if perms else None, tuple(head_perm) if perms else None,
    )
