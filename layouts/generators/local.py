"""Patterns of the offset q - k alone: ``causal`` and ``local`` (the paper's local head).

Token masks (original order, no permutation):
    causal:           k <= q
    local(window=l):  k <= q and q - k < l
Blocks are built per block offset d = qb - kb (O(nnz), no loop over blocks), so both are fast at
N = 1,048,576.
"""

from __future__ import annotations

import torch

from ..layout import DIAG, FULL, Layout
from ..size import band_blocks, check_size, tri
from ._build import check_common, check_int, fmt_name, offset_layout, token_offset_layout


def causal(n_ctx: int, block: int = 64, heads: int = 1) -> Layout:
    """Dense causal attention, ``k <= q``: full blocks below the diagonal, lower-triangular
    diagonal blocks. nnz = heads * nb (nb + 1) / 2."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    nb = n_ctx // block
    check_size(f"causal(n_ctx={n_ctx}, block={block})", tri(nb))
    d = torch.arange(nb, dtype=torch.int64)
    kinds = torch.full((nb,), FULL, dtype=torch.int8)
    kinds[0] = DIAG
    mask_ids = torch.full((nb,), -1, dtype=torch.int32)
    return offset_layout(
        n_ctx, block, heads, "causal", d, kinds, mask_ids, torch.zeros(0, block, block).bool()
    )


def local(n_ctx: int, block: int = 64, window: int = 128, heads: int = 1) -> Layout:
    """The paper's local head: each query sees itself and the ``window - 1`` tokens before it,
    ``k <= q and q - k < window``. Any window >= 1 (blocks cut by the window keep an exact
    bitmask)."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    window = check_int("window", window, 1, ": the number of tokens each query may see")
    last = (window + block - 2) // block  # the largest block offset that can hold delta < window
    check_size(f"local(n_ctx={n_ctx}, block={block}, window={window})",
               band_blocks(n_ctx // block, 0, last))
    cand = torch.arange(last + 1, dtype=torch.int64)

    def pred(delta: torch.Tensor) -> torch.Tensor:
        return (delta >= 0) & (delta < window)

    return token_offset_layout(
        n_ctx, block, heads, fmt_name("local", w=window), pred, cand
    )
