"""Shared machinery of the generators: parameter checks and fast, vectorised block-list builders.

Every builder here emits entries already sorted by (head, query block, key block), without
duplicates, so it can hand them to ``Layout`` directly (no O(nnz log nnz) sort):

- ``offset_layout``: patterns whose blocks depend only on the block offset d = qb - kb (causal,
  local, sliding windows, the merged strided head). One intra-block mask per offset, entries
  made with ``repeat_interleave`` over query blocks: O(nnz) time, no Python loop over blocks.
- ``token_offset_layout``: the same from a token predicate of delta = q - k, evaluated once per
  candidate offset on a [b, b] grid (once per residue for a periodic predicate).
- ``pairs_layout``: an arbitrary set of (head, q block, k block) pairs, every block full, or with
  ``causal`` the diagonal blocks lower-triangular and blocks above the diagonal dropped.

Heads with the same pattern go through ``shared_layout``: the Layout stores the pattern once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from ..layout import (
    CHUNK_ELEMENTS,
    DIAG,
    FULL,
    PARTIAL,
    Layout,
    LayoutError,
    check_block,
    check_heads,
    classify_blocks,
    dedup_masks,
)


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """``value`` as an int >= minimum, else LayoutError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LayoutError(f"{name}={value!r} must be an int{hint}")
    value = int(value)
    if value < minimum:
        raise LayoutError(f"{name}={value} must be >= {minimum}{hint}")
    return value


def check_common(n_ctx, block, heads) -> tuple[int, int, int]:
    """Validate (n_ctx, block, heads) and return them as ints."""
    n_ctx = check_int("n_ctx", n_ctx)
    if isinstance(block, bool) or not isinstance(block, numbers.Integral):
        raise LayoutError(f"block={block!r} must be an int: a power of two in 16..128")
    check_block(int(block), n_ctx)
    heads = check_int("heads", heads)
    check_heads(heads)
    return n_ctx, int(block), heads


def make_layout(
    n_ctx: int,
    heads: int,
    block: int,
    name: str,
    heads_idx: torch.Tensor,
    q_blocks: torch.Tensor,
    k_blocks: torch.Tensor,
    kinds: torch.Tensor,
    mask_ids: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    perms: torch.Tensor | None = None,
    head_perm: tuple[int, ...] | None = None,
) -> Layout:
    """Trusted constructor for per-head entries already sorted and unique (the builders'
    contract; the tests check it against ``Layout.from_parts``, which sorts and validates)."""
    return Layout.from_sorted(
        n_ctx, heads, block, name, heads_idx, q_blocks, k_blocks, kinds, mask_ids, masks, perms,
        head_perm,
    )


def shared_layout(
    n_ctx: int, heads: int, block: int, name: str, patterns, head_pattern, masks=None,
    perms=None, head_perm=None,
) -> Layout:
    """Trusted constructor from per-pattern sorted entries (q, k, kinds, mask_ids) and the
    pattern of each head: identical heads are stored once, never copied per head."""
    return Layout.from_patterns(
        n_ctx, heads, block, name, patterns, head_pattern, masks, perms, head_perm
    )


def ragged_rows(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For per-row counts [R]: (row of each entry, position of the entry in its row), int32
    (callers keep R and the counts below 2^31)."""
    counts = counts.to(torch.int64)
    total = int(counts.sum())
    rows = torch.repeat_interleave(
        torch.arange(counts.numel(), dtype=torch.int32), counts, output_size=total
    )
    starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    pos = torch.arange(total, dtype=torch.int32)
    pos -= torch.repeat_interleave(starts, counts, output_size=total)
    return rows, pos


def offset_layout(
    n_ctx: int,
    block: int,
    heads: int,
    name: str,
    offsets: torch.Tensor,
    kinds: torch.Tensor,
    mask_ids: torch.Tensor,
    masks: torch.Tensor,
    perms: torch.Tensor | None = None,
    head_perm: tuple[int, ...] | None = None,
) -> Layout:
    """Every head: block (qb, qb - d) for each offset d in ``offsets`` where it is in range, with
    that offset's kind and mask id. ``offsets`` int64 [n_d] distinct; ``kinds`` int8 [n_d];
    ``mask_ids`` int32 [n_d] into ``masks`` bool [M, b, b]."""
    nb = n_ctx // block
    order = torch.argsort(offsets, descending=True)  # descending d = ascending key block
    d_desc = offsets[order].to(torch.int64)
    kinds, mask_ids = kinds[order], mask_ids[order]
    asc = d_desc.flip(0)
    n_d = d_desc.numel()
    qb_all = torch.arange(nb, dtype=torch.int64)
    # entries of row qb: the d with qb - nb < d <= qb, a contiguous slice of d_desc
    lo = n_d - torch.searchsorted(asc, qb_all, right=True)  # first index with d <= qb
    hi = n_d - torch.searchsorted(asc, qb_all - nb, right=True)  # first index with d <= qb - nb
    rows, pos = ragged_rows(hi - lo)
    pos += torch.repeat_interleave(lo.to(torch.int32), hi - lo, output_size=pos.numel())
    idx = pos  # index into the offset tables (small: gathers stay in cache)
    kb = rows - d_desc.to(torch.int32)[idx]
    one = (rows, kb, kinds[idx], mask_ids[idx])
    return shared_layout(n_ctx, heads, block, name, [one], [0] * heads, masks, perms, head_perm)


def token_offset_layout(
    n_ctx: int,
    block: int,
    heads: int,
    name: str,
    pred: Callable[[torch.Tensor], torch.Tensor],
    candidates: torch.Tensor,
    period: int | None = None,
    periodic_from: int = 0,
) -> Layout:
    """A pattern that is a function of delta = q - k only: ``pred(delta int64 tensor) -> bool``.

    ``candidates`` must contain every block offset d = qb - kb whose block can be non-empty
    (extra ones cost only time). Block (qb, kb) has token mask ``pred(d*b + i - j)``. If ``pred``
    is periodic with ``period`` for delta >= ``periodic_from``, offsets whose whole block lies in
    that range are evaluated once per residue (d*b) % period: O(period) masks, not O(N/period)."""
    nb = n_ctx // block
    b = block
    cand = torch.unique(candidates.to(torch.int64))
    cand = cand[(cand > -nb) & (cand < nb)]
    src = torch.arange(cand.numel())
    evaluate = cand
    if period is not None:
        periodic = cand * b - (b - 1) >= periodic_from
        key = torch.where(periodic, (cand * b) % period, -1 - torch.arange(cand.numel()))
        ukey, src = torch.unique(key, return_inverse=True)
        first = torch.full((ukey.numel(),), cand.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, src, torch.arange(cand.numel()), reduce="amin")
        evaluate = cand[first]
    ij = torch.arange(b).unsqueeze(1) - torch.arange(b).unsqueeze(0)  # [b, b]: i - j
    step = max(1, CHUNK_ELEMENTS // (b * b))
    keep_e = [torch.zeros(0, dtype=torch.bool)]
    kind_e = [torch.zeros(0, dtype=torch.int8)]
    masks_e = [torch.zeros(0, b, b, dtype=torch.bool)]
    for s in range(0, evaluate.numel(), step):
        d = evaluate[s : s + step]
        bm = pred(d.view(-1, 1, 1) * b + ij)
        if bm.dtype != torch.bool or bm.shape != (d.numel(), b, b):
            raise LayoutError("the offset predicate must return a bool tensor shaped like delta")
        keep, kd, _, _ = classify_blocks(bm, d, torch.zeros_like(d))
        keep_e.append(keep)
        kind_e.append(kd)
        masks_e.append(bm[keep & (kd == PARTIAL)])
    keep_e, kind_e = torch.cat(keep_e), torch.cat(kind_e)
    masks, inverse = dedup_masks(torch.cat(masks_e))  # in the order of the PARTIAL kinds
    mid_e = torch.full((evaluate.numel(),), -1, dtype=torch.int32)
    mid_e[keep_e & (kind_e == PARTIAL)] = inverse.to(torch.int32)
    keep = keep_e[src]
    return offset_layout(
        n_ctx, block, heads, name, cand[keep], kind_e[src][keep], mid_e[src][keep], masks
    )


def pairs_layout(
    n_ctx: int,
    block: int,
    heads: int,
    name: str,
    h: torch.Tensor,
    qb: torch.Tensor,
    kb: torch.Tensor,
    causal: bool,
) -> Layout:
    """Blocks at (h, qb, kb) (duplicates allowed), all full; with ``causal`` blocks above the
    diagonal are dropped and diagonal blocks are lower-triangular (token rule k <= q)."""
    nb = n_ctx // block
    h, qb, kb = (torch.as_tensor(t).to(torch.int64).reshape(-1) for t in (h, qb, kb))
    if causal:
        below = kb <= qb
        h, qb, kb = h[below], qb[below], kb[below]
    key = torch.unique((h * nb + qb) * nb + kb)  # sorted, distinct
    kb = key % nb
    qb = (key // nb) % nb
    h = key // (nb * nb)
    kinds = torch.full((key.numel(),), FULL, dtype=torch.int8)
    if causal:
        kinds[qb == kb] = DIAG
    return make_layout(n_ctx, heads, block, name, h, qb, kb, kinds)


def fmt_name(kind: str, **params) -> str:
    """``kind(a=1,b=2)``: a readable layout name."""
    inner = ",".join(f"{k}={v}" for k, v in params.items())
    return f"{kind}({inner})" if inner else kind


def as_int_list(name: str, values, minimum: int = 0) -> list[int]:
    """A sequence of ints (each >= minimum), else LayoutError naming ``name``."""
    if isinstance(values, numbers.Integral):
        values = [values]
    if not isinstance(values, Sequence):
        raise LayoutError(f"{name}={values!r} must be a list of ints")
    return [check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values)]
