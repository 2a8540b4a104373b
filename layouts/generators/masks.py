"""Layouts from explicit masks: ``from_token_mask``, ``from_block_mask``, ``from_predicate``.

All three are exact. Token masks are read one chunk of query rows at a time (at most
``CHUNK_ELEMENTS`` booleans), so ``from_predicate`` never makes an N x N tensor: its memory is
O(chunk + non-empty blocks + distinct partial masks) and its time O(H N^2 / chunk) calls of fn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..layout import CHUNK_ELEMENTS, Layout, LayoutError, classify_blocks, dedup_masks
from ..size import check_size
from ._build import check_common, make_layout, pairs_layout, shared_layout


class _BlockCollector:
    """Accumulates the non-empty blocks of successive row chunks, sorted by (head, qb, kb);
    the size guard is checked as they grow (``what``: the call, for its message)."""

    def __init__(self, n_ctx: int, block: int, what: str):
        self.n, self.b, self.what = n_ctx, block, what
        self.h, self.q, self.k, self.kinds, self.mids, self.tables = [], [], [], [], [], []
        self.n_table = self.n_blocks = 0

    def add(self, head: int, q_start: int, rows: torch.Tensor) -> None:
        """rows: bool [R, N], the mask of queries q_start .. q_start + R - 1 (block-aligned)."""
        b, nb = self.b, self.n // self.b
        rb = rows.shape[0] // b
        tiles = rows.reshape(rb, b, nb, b).transpose(1, 2)  # [rb, nb, b, b] view
        qb, kb = tiles.any(dim=3).any(dim=2).nonzero(as_tuple=True)
        bm = tiles[qb, kb]
        qb = qb + q_start // b
        _, kinds, mids, table = classify_blocks(bm, qb, kb)
        self.h.append(torch.full_like(qb, head))
        self.q.append(qb)
        self.k.append(kb)
        self.kinds.append(kinds)
        self.mids.append(torch.where(mids >= 0, mids + self.n_table, mids))
        self.tables.append(table)
        self.n_table += table.shape[0]
        self.n_blocks += qb.numel()
        check_size(self.what, self.n_blocks, self.n_table * b * b)

    def layout(self, heads: int, name: str) -> Layout:
        """The collected blocks as one Layout, partial masks deduplicated across chunks."""
        b = self.b
        if not self.kinds:
            empty = torch.zeros(0, dtype=torch.int64)
            return make_layout(self.n, heads, b, name, empty, empty, empty, empty.to(torch.int8))
        kinds = torch.cat(self.kinds)
        mids = torch.cat(self.mids)
        masks, inverse = dedup_masks(torch.cat(self.tables))
        partial = mids >= 0
        mids[partial] = inverse[mids[partial].long()].to(torch.int32)
        return make_layout(
            self.n, heads, b, name, torch.cat(self.h), torch.cat(self.q), torch.cat(self.k),
            kinds, mids, masks,
        )


def _rows_per_chunk(n_ctx: int, block: int) -> int:
    """Query rows per chunk: a multiple of block, about CHUNK_ELEMENTS booleans."""
    return max(block, (CHUNK_ELEMENTS // n_ctx) // block * block)


def from_token_mask(mask: torch.Tensor, block: int = 32, name: str = "token_mask") -> Layout:
    """Exact layout of a token mask, bool [N, N] (one head) or [H, N, N], original order:
    empty blocks dropped, full / causal-diagonal blocks recognised, partial blocks keep their
    bitmask."""
    if not isinstance(mask, torch.Tensor):
        raise LayoutError(f"mask must be a torch.Tensor (bool [N, N] or [H, N, N]), got "
                          f"{type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise LayoutError(f"mask.dtype={mask.dtype} must be torch.bool: pass mask.bool() or "
                          "a comparison such as mask != 0")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[1] != mask.shape[2]:
        raise LayoutError(f"mask must be bool [N, N] or [H, N, N], got shape {tuple(mask.shape)}")
    heads, n_ctx = mask.shape[0], mask.shape[1]
    if n_ctx == 0 or heads == 0:
        raise LayoutError(f"mask has an empty dimension: shape {tuple(mask.shape)}")
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    mask = mask.cpu()
    col = _BlockCollector(n_ctx, block, f"from_token_mask(n_ctx={n_ctx}, block={block})")
    step = _rows_per_chunk(n_ctx, block)
    for h in range(heads):
        for r0 in range(0, n_ctx, step):
            col.add(h, r0, mask[h, r0 : r0 + step].contiguous())
    return col.layout(heads, name)


def from_block_mask(
    bmask: torch.Tensor, block: int = 32, causal: bool = True, name: str = "block_mask"
) -> Layout:
    """Layout of a block mask, bool [H, nb, nb] (or [nb, nb] for one head); n_ctx = nb * block.

    ``causal=True``: the token rule k <= q applies, diagonal blocks are lower-triangular and a
    block above the diagonal is an error. ``causal=False``: every marked block is full."""
    if not isinstance(bmask, torch.Tensor) or bmask.dtype != torch.bool:
        raise LayoutError("bmask must be a bool tensor [H, nb, nb]: pass bmask.bool()")
    if bmask.dim() == 2:
        bmask = bmask.unsqueeze(0)
    if bmask.dim() != 3 or bmask.shape[1] != bmask.shape[2] or 0 in bmask.shape:
        raise LayoutError(f"bmask must be bool [H, nb, nb], got shape {tuple(bmask.shape)}")
    if not isinstance(causal, bool):
        raise LayoutError(f"causal={causal!r} must be True or False")
    heads, nb = bmask.shape[0], bmask.shape[1]
    if isinstance(block, int) and not isinstance(block, bool) and block > 0:
        n_ctx = nb * block
    else:
        n_ctx = nb
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    h, q, k = bmask.cpu().nonzero(as_tuple=True)
    if causal and (k > q).any():
        i = int((k > q).nonzero()[0, 0])
        raise LayoutError(
            f"bmask[{int(h[i])}, {int(q[i])}, {int(k[i])}] lies above the diagonal, which "
            "causal=True forbids: pass bmask.tril() or causal=False"
        )
    return pairs_layout(n_ctx, block, heads, name, h, q, k, causal)


def _arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return 3 if len(positional) == 3 else 2


def from_predicate(
    n_ctx: int, fn: Callable, block: int = 32, heads: int = 1, name: str | None = None
) -> Layout:
    """Exact layout of ``fn(q_idx, k_idx) -> bool tensor`` (or ``fn(h, q_idx, k_idx)`` when fn
    takes three arguments). ``q_idx`` is int64 [R, 1] (a chunk of original query indices),
    ``k_idx`` int64 [1, N]; the result must broadcast to bool [R, N]. Evaluated in chunks of
    rows, so no N x N tensor is made."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    if not callable(fn):
        raise LayoutError(f"fn must be callable fn(q_idx, k_idx) -> bool tensor, got {fn!r}")
    per_head = _arity(fn) == 3
    name = name or f"predicate({getattr(fn, '__name__', 'fn')})"
    col = _BlockCollector(n_ctx, block, f"from_predicate(n_ctx={n_ctx}, block={block})")
    step = _rows_per_chunk(n_ctx, block)
    k_idx = torch.arange(n_ctx).unsqueeze(0)
    for h in range(heads if per_head else 1):
        for r0 in range(0, n_ctx, step):
            q_idx = torch.arange(r0, min(r0 + step, n_ctx)).unsqueeze(1)
            out = fn(h, q_idx, k_idx) if per_head else fn(q_idx, k_idx)
            if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
                raise LayoutError(
                    "fn must return a bool tensor (e.g. `k <= q`), got "
                    f"{getattr(out, 'dtype', type(out).__name__)}"
                )
            try:
                out = torch.broadcast_to(out, (q_idx.shape[0], n_ctx))
            except RuntimeError as e:
                raise LayoutError(
                    f"fn's result {tuple(out.shape)} does not broadcast to [rows, N]: {e}"
                ) from None
            col.add(h, r0, out.contiguous())
    one = col.layout(heads if per_head else 1, name)
    if per_head or heads == 1:
        return one
    return shared_layout(n_ctx, heads, block, name, [one.pattern(0)], [0] * heads, one.masks)
