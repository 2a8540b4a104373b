"""Re-blocking: the same token pattern at another block size, exact.

Refining splits every block into f x f sub-blocks through a per-kind table (FULL, DIAG and each
distinct mask), so the cost is O(nnz f^2) with no mask materialised per block. Coarsening
describes each new block by its *signature*, the f x f codes of the old sub-blocks it covers
(empty / full / lower-triangular / mask id); only distinct signatures are materialised and
classified. Both are vectorised over blocks (sorts, scatters, ``unique`` over small signature
tables). ``Layout.reblock`` validates the block, keeps the permutation and calls
``change_block``; this module builds its result with ``type(L).from_sorted``, so it imports
nothing of ``layout.py`` at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .blockmasks import (
    CHUNK_ELEMENTS,
    DIAG,
    FULL,
    PARTIAL,
    classify_blocks,
    compact_table,
    dedup_masks,
    remap_ids,
    tril_mask,
    with_tril,
)

if TYPE_CHECKING:  # for the annotations only: layout.py imports this module
    from .layout import Layout

EMPTY = -1  # kind code of an empty sub-block in the tables below


def change_block(L: Layout, block: int) -> Layout:
    """``L`` (a Layout, one head per pattern) at ``block``, a valid power of two other than
    ``L.block``; the caller (``Layout.reblock``) validates it and shares patterns between heads."""
    return _refine(L, block) if block < L.block else _coarsen(L, block)


def _refine(L: Layout, nbk: int) -> Layout:
    f = L.block // nbk
    m = L.masks.shape[0]
    # sub-block tables [2 + M, f, f]: row 0 FULL parent, row 1 DIAG parent, 2 + m mask m
    ii = torch.arange(f).view(f, 1)
    jj = torch.arange(f).view(1, f)
    t_kind = torch.full((2 + m, f, f), EMPTY, dtype=torch.int64)
    t_mask = torch.full((2 + m, f, f), -1, dtype=torch.int64)
    t_kind[0] = FULL
    t_kind[1] = torch.where(ii > jj, FULL, torch.where(ii == jj, DIAG, EMPTY))
    table = torch.zeros(0, nbk, nbk, dtype=torch.bool)
    if m:
        sub = L.masks.view(m, f, nbk, f, nbk).permute(0, 1, 3, 2, 4).reshape(-1, nbk, nbk)
        si = ii.expand(f, f).reshape(1, -1).expand(m, -1).reshape(-1)
        sj = jj.expand(f, f).reshape(1, -1).expand(m, -1).reshape(-1)
        keep, kinds, mids, table = classify_blocks(sub, si, sj)
        kk = torch.where(keep, kinds.long(), EMPTY)
        t_kind[2:] = kk.view(m, f, f)
        t_mask[2:] = mids.long().view(m, f, f)
    table, tril_id = with_tril(table, nbk)
    tid = torch.where(L.kinds == FULL, 0, torch.where(L.kinds == DIAG, 1, 2 + L.mask_ids.long()))
    kind = t_kind[tid]  # [n, f, f]
    mid = t_mask[tid]
    on_diag = (L.q_blocks == L.k_blocks).view(-1, 1, 1)
    # a lower-triangular sub-block off the new diagonal is a PARTIAL block with the tril mask
    fix = (kind == DIAG) & ~(on_diag & (ii == jj))
    kind = torch.where(fix, PARTIAL, kind)
    mid = torch.where(fix, tril_id, mid)
    # order (h, qb, i, kb, j) without a sort: rows of entries are contiguous runs
    n = L.nnz
    row = L.heads_idx.long() * L.n_blocks + L.q_blocks.long()
    _, counts = torch.unique_consecutive(row, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    g = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    p = torch.arange(n) - starts[g]
    c = counts[g]
    dest = ((starts[g] * f * f).view(-1, 1, 1) + ii * (c * f).view(-1, 1, 1)
            + p.view(-1, 1, 1) * f + jj)
    order = torch.empty(n * f * f, dtype=torch.int64)
    order[dest.reshape(-1)] = torch.arange(n * f * f)
    h = L.heads_idx.long().view(-1, 1, 1).expand(n, f, f).reshape(-1)[order]
    q = (L.q_blocks.long().view(-1, 1, 1) * f + ii).expand(n, f, f).reshape(-1)[order]
    k = (L.k_blocks.long().view(-1, 1, 1) * f + jj).expand(n, f, f).reshape(-1)[order]
    kind = kind.reshape(-1)[order]
    mid = mid.reshape(-1)[order]
    keep = kind != EMPTY
    table, used = compact_table(table, mid[keep])
    return type(L).from_sorted(
        L.n_ctx, L.heads, nbk, L.name, h[keep], q[keep], k[keep], kind[keep], used,
        table, L.perms, L.head_perm,
    )


def _coarsen(L: Layout, nbk: int) -> Layout:
    b, f = L.block, nbk // L.block
    nbn = L.n_ctx // nbk
    h, qb, kb = L.heads_idx.long(), L.q_blocks.long(), L.k_blocks.long()
    key = (h * nbn + qb // f) * nbn + kb // f
    ukey, gid = torch.unique(key, return_inverse=True)
    code = torch.where(
        L.kinds == FULL, -2, torch.where(L.kinds == DIAG, -3, L.mask_ids.long())
    )
    sig = torch.full((ukey.numel(), f * f), EMPTY, dtype=torch.int64)
    sig[gid, (qb % f) * f + kb % f] = code
    usig, sid = torch.unique(sig, dim=0, return_inverse=True)
    n_sig = usig.shape[0]
    kind_s = torch.full((n_sig,), FULL, dtype=torch.int8)
    mid_s = torch.full((n_sig,), -1, dtype=torch.int64)
    nonfull = (usig != -2).any(1).nonzero().squeeze(1)
    tables = [torch.zeros(0, nbk, nbk, dtype=torch.bool)]
    offset = 0
    step = max(1, CHUNK_ELEMENTS // (nbk * nbk))
    tril_b = tril_mask(b)
    for s in range(0, nonfull.numel(), step):
        idx = nonfull[s : s + step]
        codes = usig[idx].view(-1, f, f)
        tiles = torch.zeros(idx.numel(), f, f, b, b, dtype=torch.bool)
        tiles[codes == -2] = True
        tiles[codes == -3] = tril_b
        part = codes >= 0
        if part.any():
            tiles[part] = L.masks[codes[part]]
        mats = tiles.permute(0, 1, 3, 2, 4).reshape(-1, nbk, nbk)
        zeros = torch.zeros(idx.numel(), dtype=torch.int64)
        _, kinds, mids, table = classify_blocks(mats, zeros, zeros)  # as if on the diagonal
        kind_s[idx] = kinds
        mid_s[idx] = torch.where(mids >= 0, mids.long() + offset, -1)
        tables.append(table)
        offset += table.shape[0]
    table = torch.cat(tables)
    kind = kind_s[sid]
    mid = mid_s[sid]
    q_new = (ukey // nbn) % nbn
    k_new = ukey % nbn
    h_new = ukey // (nbn * nbn)
    fix = (kind == DIAG) & (q_new != k_new)
    if fix.any():
        table, tril_id = with_tril(table, nbk)
        kind = torch.where(fix, PARTIAL, kind)
        mid = torch.where(fix, tril_id, mid)
    table, inverse = dedup_masks(table)
    mid = remap_ids(mid, inverse)
    table, mid = compact_table(table, mid)
    return type(L).from_sorted(
        L.n_ctx, L.heads, nbk, L.name, h_new, q_new, k_new, kind, mid, table, L.perms,
        L.head_perm,
    )
