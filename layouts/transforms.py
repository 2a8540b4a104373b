"""Exact transforms of layouts: ``reblock``, ``union``, ``stack_heads`` (and ``select_heads``).

All are vectorised over blocks (sorts, scatters, ``unique`` over small signature tables); the
only Python loops run over heads, input layouts or chunks of distinct masks.

- ``reblock(L, block)``: the same token pattern at another block size. Refining splits every
  block into f x f sub-blocks through a per-kind table (FULL, DIAG and each distinct mask), so
  the cost is O(nnz f^2) with no mask materialised per block. Coarsening describes each new
  block by its *signature*, the f x f codes of the old sub-blocks it covers (empty / full /
  lower-triangular / mask id); only distinct signatures are materialised and classified. The
  permutation is kept (a strided layout stays exact at any block; its block-diagonal structure
  needs the block to divide N/l).
- ``union(*layouts)``: token-mask OR, same n_ctx and heads; blocks of different sizes go to the
  finest; per head the permutations must agree.
- ``stack_heads(*layouts)``: concatenate heads (same n_ctx; blocks to the finest).
"""

from __future__ import annotations

import torch

from .generators._build import make_layout, shared_layout
from .layout import (
    CHUNK_ELEMENTS,
    DIAG,
    FULL,
    PARTIAL,
    Layout,
    LayoutError,
    check_block,
    classify_blocks,
    dedup_masks,
    tril_mask,
)

EMPTY = -1  # kind code of an empty sub-block in the tables below


# ---------------------------------------------------------------------------------- helpers
def _merge_tables(tables: list[torch.Tensor], block: int) -> tuple[torch.Tensor, list]:
    """Deduplicate the concatenation of mask tables: (table [M, b, b], per input a map
    old id -> new id as an int64 tensor)."""
    sizes = [t.shape[0] for t in tables]
    allm = torch.cat(tables) if tables else torch.zeros(0, block, block, dtype=torch.bool)
    table, inverse = dedup_masks(allm)
    maps, s = [], 0
    for n in sizes:
        maps.append(inverse[s : s + n])
        s += n
    return table, maps


def _remap(mask_ids: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """int32 ids with every id >= 0 replaced by mapping[id] (-1 stays -1)."""
    out = mask_ids.to(torch.int32).clone()
    sel = out >= 0
    out[sel] = mapping[out[sel].long()].to(torch.int32)
    return out


def _with_tril(table: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``table`` with the lower-triangular mask present; returns (table, its row)."""
    tril = tril_mask(block)
    hit = (table == tril).reshape(table.shape[0], block * block).all(1).nonzero()
    if hit.numel():
        return table, int(hit[0, 0])
    return torch.cat([table, tril.unsqueeze(0)]), table.shape[0]


def _finest(layouts: tuple[Layout, ...]) -> list[Layout]:
    block = min(L.block for L in layouts)
    return [reblock(L, block) for L in layouts]


# ---------------------------------------------------------------------------------- reblock
def reblock(layout: Layout, block: int) -> Layout:
    """The same token pattern at ``block`` (a power of two in 16..128 dividing n_ctx), exact."""
    if not isinstance(layout, Layout):
        raise LayoutError(f"layout must be a Layout, got {type(layout).__name__}")
    check_block(block, layout.n_ctx)
    if block == layout.block:
        return layout
    # work on the distinct patterns only (one head each), then give every head its pattern back
    L = layout
    patterns = [L.pattern(p) for p in range(L.n_patterns)]
    one = Layout.from_patterns(L.n_ctx, L.n_patterns, L.block, L.name, patterns,
                               range(L.n_patterns), L.masks)
    R = _refine(one, block) if block < L.block else _coarsen(one, block)
    return shared_layout(
        L.n_ctx, L.heads, block, L.name, [R.head_entries(p) for p in range(R.heads)],
        L.head_pattern, R.masks, L.perms, L.head_perm,
    )


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
    table, tril_id = _with_tril(table, nbk)
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
    dest = (starts[g] * f * f).view(-1, 1, 1) + ii * (c * f).view(-1, 1, 1) + p.view(-1, 1, 1) * f + jj
    order = torch.empty(n * f * f, dtype=torch.int64)
    order[dest.reshape(-1)] = torch.arange(n * f * f)
    h = L.heads_idx.long().view(-1, 1, 1).expand(n, f, f).reshape(-1)[order]
    q = (L.q_blocks.long().view(-1, 1, 1) * f + ii).expand(n, f, f).reshape(-1)[order]
    k = (L.k_blocks.long().view(-1, 1, 1) * f + jj).expand(n, f, f).reshape(-1)[order]
    kind = kind.reshape(-1)[order]
    mid = mid.reshape(-1)[order]
    keep = kind != EMPTY
    table, used = _compact_table(table, mid[keep])
    return make_layout(
        L.n_ctx, L.heads, nbk, L.name, h[keep], q[keep], k[keep], kind[keep], used,
        table, L.perms, L.head_perm,
    )


def _compact_table(table: torch.Tensor, mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop unused rows of ``table``; returns (table, remapped mids)."""
    used = mids[mids >= 0]
    present = torch.zeros(table.shape[0], dtype=torch.bool)
    present[used] = True
    new_id = torch.cumsum(present, 0) - 1
    return table[present].contiguous(), _remap(mids, new_id)


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
        table, tril_id = _with_tril(table, nbk)
        kind = torch.where(fix, PARTIAL, kind)
        mid = torch.where(fix, tril_id, mid)
    table, inverse = dedup_masks(table)
    mid = _remap(mid, inverse)
    table, mid = _compact_table(table, mid)
    return make_layout(
        L.n_ctx, L.heads, nbk, L.name, h_new, q_new, k_new, kind, mid, table, L.perms,
        L.head_perm,
    )


# ---------------------------------------------------------------------------------- heads
def select_heads(sources: list[tuple[Layout, int]], name: str) -> Layout:
    """A layout whose head i is head ``sources[i][1]`` of layout ``sources[i][0]`` (all of one
    n_ctx and block). Shared patterns stay shared: nothing is copied per head."""
    if not sources:
        raise LayoutError("select_heads needs at least one (layout, head)")
    n_ctx, block = sources[0][0].n_ctx, sources[0][0].block
    distinct: list[Layout] = []
    for L, h in sources:
        if L.n_ctx != n_ctx or L.block != block:
            raise LayoutError(
                f"layouts differ in n_ctx/block ({L.n_ctx}/{L.block} vs {n_ctx}/{block}): "
                "build them for one n_ctx (blocks are reblocked by union/stack_heads)"
            )
        if not 0 <= h < L.heads:
            raise LayoutError(f"head {h} is outside 0..{L.heads - 1} of {L.name}")
        if not any(L is d for d in distinct):
            distinct.append(L)
    table, maps = _merge_tables([L.masks for L in distinct], block)
    patterns: list = []
    pattern_of: dict[tuple[int, int], int] = {}
    head_pattern, head_perm, perms = [], [], []
    for L, h in sources:
        li = next(i for i, d in enumerate(distinct) if d is L)
        key = (li, L.head_pattern[h])
        if key not in pattern_of:
            q, k, kinds, mids = L.head_entries(h)
            pattern_of[key] = len(patterns)
            patterns.append((q, k, kinds, _remap(mids, maps[li])))
        head_pattern.append(pattern_of[key])
        p = L.perm_of_head(h)
        if p is None:
            head_perm.append(-1)
            continue
        row = next((i for i, x in enumerate(perms) if torch.equal(x, p)), None)
        if row is None:
            perms.append(p)
            row = len(perms) - 1
        head_perm.append(row)
    return shared_layout(
        n_ctx, len(sources), block, name, patterns, head_pattern, table,
        torch.stack(perms) if perms else None, tuple(head_perm) if perms else None,
    )


def stack_heads(*layouts: Layout, name: str | None = None) -> Layout:
    """Concatenate the heads of ``layouts`` (same n_ctx; blocks go to the finest)."""
    _check_layouts(layouts, "stack_heads")
    ls = _finest(layouts)
    name = name or "stack(" + ",".join(L.name for L in layouts) + ")"
    return select_heads([(L, h) for L in ls for h in range(L.heads)], name)


def _check_layouts(layouts, what: str) -> None:
    if not layouts:
        raise LayoutError(f"{what} needs at least one layout")
    for L in layouts:
        if not isinstance(L, Layout):
            raise LayoutError(f"{what} takes Layouts, got {type(L).__name__}")
    n = {L.n_ctx for L in layouts}
    if len(n) > 1:
        raise LayoutError(f"{what}: layouts have different n_ctx {sorted(n)}: build them for one")


# ---------------------------------------------------------------------------------- union
def union(*layouts: Layout, name: str | None = None) -> Layout:
    """Token-mask OR of ``layouts`` (same n_ctx and heads; blocks go to the finest). Per head
    the permutations must agree: a union is taken in one token order."""
    _check_layouts(layouts, "union")
    heads = {L.heads for L in layouts}
    if len(heads) > 1:
        raise LayoutError(f"union: layouts have different heads {sorted(heads)}: build them "
                          "with one number of heads (or combine heads with stack_heads)")
    ls = _finest(layouts)
    first = ls[0]
    for L in ls[1:]:
        for h in range(first.heads):
            p0, p1 = first.perm_of_head(h), L.perm_of_head(h)
            same = (p0 is None and p1 is None) or (
                p0 is not None and p1 is not None and torch.equal(p0, p1)
            )
            if not same:
                raise LayoutError(
                    f"union: head {h} of {first.name!r} and {L.name!r} use different token "
                    "permutations (e.g. strided's transpose), so their blocks do not line up: "
                    "use merged_strided for local | strided, or from_predicate for the exact "
                    "token rule"
                )
    name = name or "union(" + ",".join(L.name for L in layouts) + ")"
    b, nb, n_ctx, H = first.block, first.n_blocks, first.n_ctx, first.heads
    table, maps = _merge_tables([L.masks for L in ls], b)
    h = torch.cat([L.heads_idx.long() for L in ls])
    q = torch.cat([L.q_blocks.long() for L in ls])
    k = torch.cat([L.k_blocks.long() for L in ls])
    kind = torch.cat([L.kinds for L in ls])
    mid = torch.cat([_remap(L.mask_ids, mp) for L, mp in zip(ls, maps)]).long()
    key = (h * nb + q) * nb + k
    ukey, gid, counts = torch.unique(key, return_inverse=True, return_counts=True)
    g = ukey.numel()
    # per group: any FULL -> FULL; a single member -> itself; else OR the members' masks
    any_full = torch.zeros(g, dtype=torch.bool)
    any_full[gid[kind == FULL]] = True
    first_idx = torch.full((g,), key.numel(), dtype=torch.int64)
    first_idx.scatter_reduce_(0, gid, torch.arange(key.numel()), reduce="amin")
    g_kind = kind[first_idx].clone()
    g_mid = mid[first_idx].clone()
    g_kind[any_full] = FULL
    g_mid[any_full] = -1
    multi = (counts > 1) & ~any_full
    if multi.any():
        members = multi[gid].nonzero().squeeze(1)
        mg = torch.cumsum(multi, 0) - 1  # group -> index among multi groups
        n_multi = int(multi.sum())
        acc = torch.zeros(n_multi, b, b, dtype=torch.uint8)
        tiles = torch.ones(members.numel(), b, b, dtype=torch.bool)
        mk = kind[members]
        tiles[mk == DIAG] = tril_mask(b)
        pm = mk == PARTIAL
        tiles[pm] = table[mid[members][pm]]
        acc.index_add_(0, mg[gid[members]], tiles.to(torch.uint8))
        gq = (ukey[multi] // nb) % nb
        gk = ukey[multi] % nb
        _, mkind, mmid, mtable = classify_blocks(acc > 0, gq, gk)
        both, mmaps = _merge_tables([table, mtable], b)
        g_mid = _remap(g_mid, mmaps[0]).long()
        g_kind[multi] = mkind
        g_mid[multi] = _remap(mmid, mmaps[1]).long()
        table = both
    table, g_mid = _compact_table(table, g_mid)
    return make_layout(
        n_ctx, H, b, name, ukey // (nb * nb), (ukey // nb) % nb, ukey % nb, g_kind, g_mid,
        table, first.perms, first.head_perm,
    )
