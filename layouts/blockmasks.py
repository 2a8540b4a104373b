"""Intra-block masks: the kinds of a block, the lower-triangular mask, exact classification and
deduplication of block masks (bool [n, b, b]) by their bit-packed keys, and the bookkeeping of
mask tables (remapping, compacting)."""

from __future__ import annotations

import functools

import numpy as np
import torch

FULL, DIAG, PARTIAL = 0, 1, 2
KIND_NAMES = {FULL: "full", DIAG: "causal-diagonal", PARTIAL: "partial"}
# Bound on the elements of any temporary bool tensor made while classifying or materialising.
CHUNK_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=8)
def tril_mask(block: int) -> torch.Tensor:
    """bool [b, b]: key <= query inside a diagonal block."""
    return torch.ones(block, block, dtype=torch.bool).tril_()


def pack_bits(masks: torch.Tensor) -> torch.Tensor:
    """bool [n, b, b] -> int64 [n, b*b/64]: a compact, exact key per mask (for dedup/compare)."""
    n = masks.shape[0]
    packed = np.packbits(masks.reshape(n, masks.shape[1] * masks.shape[2]).numpy(), axis=1)  # uint8 [n, b*b/8]
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.int64))


def dedup_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct masks of bool [n, b, b]: returns (unique bool [M, b, b], inverse int64 [n]).

    Compares bit-packed keys (8x smaller than the bools), so it stays fast for many blocks."""
    n, b, _ = masks.shape
    if n == 0:
        return masks.reshape(0, b, b).clone(), torch.zeros(0, dtype=torch.int64)
    keys = pack_bits(masks.contiguous())
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    m = int(inverse.max()) + 1
    first = torch.full((m,), n, dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    return masks[first].contiguous(), inverse


def canonical_masks(
    mask_ids: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask table in canonical form (distinct, used, sorted by packed bits) and the mask ids
    remapped to it, so equal patterns give equal content hashes. O(nnz + M b^2)."""
    m = masks.shape[0]
    if m == 0:
        return mask_ids, masks
    table, inverse = dedup_masks(masks)
    ids = mask_ids.long() + 1  # 0: no mask
    present_old = torch.bincount(ids, minlength=m + 1)[1:] > 0
    if table.shape[0] == m and bool(present_old.all()) and torch.equal(inverse, torch.arange(m)):
        return mask_ids, masks
    present = torch.zeros(table.shape[0], dtype=torch.bool)
    present[inverse[present_old]] = True
    lut = torch.full((m + 1,), -1, dtype=torch.int64)
    lut[1:] = (torch.cumsum(present, 0) - 1)[inverse]
    return lut[ids].to(mask_ids.dtype), table[present].contiguous()


def classify_blocks(
    block_masks: torch.Tensor, q_blocks: torch.Tensor, k_blocks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classify token masks of blocks.

    block_masks: bool [n, b, b]; q_blocks, k_blocks: int [n].
    Returns (keep bool [n], kinds int8 [n], mask_ids int32 [n], masks bool [M, b, b]): empty
    blocks are marked keep=False; mask_ids index the deduplicated ``masks`` for PARTIAL blocks.
    """
    n, b, _ = block_masks.shape
    counts = block_masks.reshape(n, b * b).sum(1)
    keep = counts > 0
    full = counts == b * b
    is_diag_pos = torch.as_tensor(q_blocks) == torch.as_tensor(k_blocks)
    tril = tril_mask(b)
    is_tril = counts == b * (b + 1) // 2
    if is_tril.any():
        cand = is_tril.nonzero().squeeze(1)
        is_tril[cand] = (block_masks[cand] == tril).reshape(cand.numel(), b * b).all(1)
    kinds = torch.full((n,), PARTIAL, dtype=torch.int8)
    kinds[full] = FULL
    kinds[is_diag_pos & is_tril & ~full] = DIAG
    mask_ids = torch.full((n,), -1, dtype=torch.int32)
    partial = keep & (kinds == PARTIAL)
    if partial.any():
        masks, inverse = dedup_masks(block_masks[partial])
        mask_ids[partial] = inverse.to(torch.int32)
    else:
        masks = torch.zeros(0, b, b, dtype=torch.bool)
    return keep, kinds, mask_ids, masks


def remap_ids(mask_ids: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """int32 ids with every id >= 0 replaced by mapping[id] (-1 stays -1)."""
    out = mask_ids.to(torch.int32).clone()
    sel = out >= 0
    out[sel] = mapping[out[sel].long()].to(torch.int32)
    return out


def compact_table(table: torch.Tensor, mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop unused rows of the mask table ``table`` [M, b, b]; returns (table, remapped mids)."""
    used = mids[mids >= 0]
    present = torch.zeros(table.shape[0], dtype=torch.bool)
    present[used] = True
    new_id = torch.cumsum(present, 0) - 1
    return table[present].contiguous(), remap_ids(mids, new_id)


def with_tril(table: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``table`` [M, b, b] with the lower-triangular mask present; returns (table, its row)."""
    tril = tril_mask(block)
    hit = (table == tril).reshape(table.shape[0], block * block).all(1).nonzero()
    if hit.numel():
        return table, int(hit[0, 0])
    return torch.cat([table, tril.unsqueeze(0)]), table.shape[0]
