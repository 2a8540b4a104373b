"""Exact transforms of layouts: ``reblock``, ``union``, ``stack_heads`` (and ``select_heads``).

All are vectorised over blocks (sorts, scatters, ``unique`` over small signature tables); the
only Python loops run over heads, input layouts or chunks of distinct masks.

- ``reblock(L, block)``: the same token pattern at another block size (``Layout.reblock``; the
  algorithm is in ``blocksize``). The permutation is kept (a strided layout stays exact at any
  block; its block-diagonal structure needs the block to divide N/l).
- ``union(*layouts)``: token-mask OR, same n_ctx and heads; blocks of different sizes go to the
  finest; per head the permutations must agree.
- ``stack_heads(*layouts)``: concatenate heads (same n_ctx; blocks to the finest).
"""

from __future__ import annotations

import torch

from .blockmasks import (
    DIAG,
    FULL,
    PARTIAL,
    classify_blocks,
    compact_table,
    dedup_masks,
    remap_ids,
    tril_mask,
)
from .layout import Layout, LayoutError


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


def _finest(layouts: tuple[Layout, ...]) -> list[Layout]:
    block = min(L.block for L in layouts)
    return [reblock(L, block) for L in layouts]


def reblock(layout: Layout, block: int) -> Layout:
    """The same token pattern at ``block`` (a power of two in 16..128 dividing n_ctx), exact."""
    if not isinstance(layout, Layout):
        raise LayoutError(f"layout must be a Layout, got {type(layout).__name__}")
    return layout.reblock(block)


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
            patterns.append((q, k, kinds, remap_ids(mids, maps[li])))
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
    return Layout.from_patterns(
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
    mid = torch.cat([remap_ids(L.mask_ids, mp) for L, mp in zip(ls, maps)]).long()
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
        g_mid = remap_ids(g_mid, mmaps[0]).long()
        g_kind[multi] = mkind
        g_mid[multi] = remap_ids(mmid, mmaps[1]).long()
        table = both
    table, g_mid = compact_table(table, g_mid)
    return Layout.from_sorted(
        n_ctx, H, b, name, ukey // (nb * nb), (ukey // nb) % nb, ukey % nb, g_kind, g_mid,
        table, first.perms, first.head_perm,
    )
