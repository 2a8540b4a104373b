"""Shared machinery of the generators: parameter checks and fast, vectorised block-list builders.

Every builder here emits entries already sorted by (head, query block, key block), without
duplicates, so it can hand them to ``Layout`` directly (no O(nnz log nnz) sort):

- ``offset_layout``: patterns whose blocks depend only on the block offset d = qb - kb (causal,
  local, sliding windows, the merged strided head). One intra-block mask per offset, entries
  made with ``repeat_interleave`` over query blocks: O(nnz) time, no Python loop over blocks.
- ``token_offset_layout``: the same from a token predicate of delta = q - k, evaluated once per
  candidate offset on a [b, b] grid.
- ``pairs_layout``: an arbitrary set of (head, q block, k block) pairs, every block full, or with
  ``causal`` the diagonal blocks lower-triangular and blocks above the diagonal dropped.
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
    """Trusted constructor for entries already sorted and unique (the builders' contract; the
    tests check it against ``Layout.from_parts``, which sorts and validates)."""
    n = kinds.numel()
    if masks is None:
        masks = torch.zeros(0, block, block, dtype=torch.bool)
    if mask_ids is None:
        mask_ids = torch.full((n,), -1, dtype=torch.int32)
    return Layout(
        n_ctx=n_ctx,
        heads=heads,
        block=block,
        name=name,
        heads_idx=heads_idx.to(torch.int32).contiguous(),
        q_blocks=q_blocks.to(torch.int32).contiguous(),
        k_blocks=k_blocks.to(torch.int32).contiguous(),
        kinds=kinds.to(torch.int8).contiguous(),
        mask_ids=mask_ids.to(torch.int32).contiguous(),
        masks=masks.to(torch.bool).contiguous(),
        perms=perms,
        head_perm=head_perm,
    )


def ragged_rows(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For per-row counts int64 [R]: (row of each entry, position of the entry in its row)."""
    total = int(counts.sum())
    rows = torch.repeat_interleave(torch.arange(counts.numel()), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(total) - starts[rows]
    return rows, pos


def replicate_heads(
    heads: int, q: torch.Tensor, k: torch.Tensor, kinds: torch.Tensor, mids: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """One head's sorted entries repeated for ``heads`` heads (int32 / int8 results)."""
    n = q.numel()
    h = torch.arange(heads, dtype=torch.int32).repeat_interleave(n)
    q, k = q.to(torch.int32), k.to(torch.int32)
    kinds, mids = kinds.to(torch.int8), mids.to(torch.int32)
    if heads == 1:
        return h, q, k, kinds, mids
    return h, q.repeat(heads), k.repeat(heads), kinds.repeat(heads), mids.repeat(heads)


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
    idx = pos + lo[rows]
    kb = rows - d_desc[idx]
    h, q, k, kd, mid = replicate_heads(heads, rows, kb, kinds[idx], mask_ids[idx])
    return make_layout(n_ctx, heads, block, name, h, q, k, kd, mid, masks, perms, head_perm)


def token_offset_layout(
    n_ctx: int,
    block: int,
    heads: int,
    name: str,
    pred: Callable[[torch.Tensor], torch.Tensor],
    candidates: torch.Tensor,
) -> Layout:
    """A pattern that is a function of delta = q - k only: ``pred(delta int64 tensor) -> bool``.

    ``candidates`` must contain every block offset d = qb - kb whose block can be non-empty
    (extra ones cost only time). Block (qb, kb) has token mask ``pred(d*b + i - j)``."""
    nb = n_ctx // block
    b = block
    cand = torch.unique(candidates.to(torch.int64))
    cand = cand[(cand > -nb) & (cand < nb)]
    ij = torch.arange(b).unsqueeze(1) - torch.arange(b).unsqueeze(0)  # [b, b]: i - j
    step = max(1, CHUNK_ELEMENTS // (b * b))
    found_d = [torch.zeros(0, dtype=torch.int64)]
    found_kind = [torch.zeros(0, dtype=torch.int8)]
    found_masks = [torch.zeros(0, b, b, dtype=torch.bool)]
    for s in range(0, cand.numel(), step):
        d = cand[s : s + step]
        bm = pred(d.view(-1, 1, 1) * b + ij)
        if bm.dtype != torch.bool or bm.shape != (d.numel(), b, b):
            raise LayoutError("the offset predicate must return a bool tensor shaped like delta")
        keep, kd, _, _ = classify_blocks(bm, d, torch.zeros_like(d))
        found_d.append(d[keep])
        found_kind.append(kd[keep])
        found_masks.append(bm[keep & (kd == PARTIAL)])
    d_all = torch.cat(found_d)
    kinds = torch.cat(found_kind)
    masks, inverse = dedup_masks(torch.cat(found_masks))  # in the order of the PARTIAL kinds
    mask_ids = torch.full((d_all.numel(),), -1, dtype=torch.int32)
    mask_ids[kinds == PARTIAL] = inverse.to(torch.int32)
    return offset_layout(n_ctx, block, heads, name, d_all, kinds, mask_ids, masks)


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
