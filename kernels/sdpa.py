"""Peer backend ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``.

It runs only layouts that are dense attention: every head all blocks FULL (bidirectional), or
exactly plain causal (per head, every block with key block < query block FULL, every diagonal
block DIAG, nothing above the diagonal, no token permutation). ``supports(layout)`` says why any
other layout is refused. q, k, v [B, H, N, D] -> out [B, H, N, D]; causal and full layouts have
no empty rows, so nothing special happens there.

On CUDA with fp16/bf16 it pins FlashAttention (``SDPBackend.FLASH_ATTENTION``, D <= 256 and
D % 8 == 0), the peer the standard problem measures; otherwise PyTorch picks its default kernel. Memory:
whatever the chosen kernel uses (FlashAttention: O(B H N) beyond inputs and outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stbench.errors import BackendUnavailable
from stbench.layouts import DIAG, FULL, Layout

SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256  # FlashAttention-2's largest head dimension
FLASH_HEAD_DIM_MULTIPLE = 8


def dense_kind(layout: Layout) -> str | None:
    """'full', 'causal', or None when the layout is neither (checked from the block lists:
    O(nnz), no mask is materialised)."""
    h, nb = layout.heads, layout.n_blocks
    kinds, qb, kb = layout.kinds, layout.q_blocks, layout.k_blocks
    # blocks are unique (Layout.from_parts enforces it), so counts plus kinds decide exactly
    if layout.nnz == h * nb * nb and bool((kinds == FULL).all()):
        return "full"  # a permutation of a full pattern is still full
    if layout.perms is not None or layout.nnz != h * nb * (nb + 1) // 2:
        return None
    expected = torch.where(qb == kb, DIAG, FULL).to(kinds.dtype)
    if bool((kb <= qb).all()) and torch.equal(kinds, expected):
        return "causal"
    return None


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise BackendUnavailable(
            f"backend 'sdpa' does not support dtype={dtype}: use one of "
            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
        )


def supports(layout: Layout) -> str | None:
    if dense_kind(layout) is None:
        return (
            "the layout is neither full nor plain causal; SDPA computes only dense attention: "
            "use backend 'triton', 'flex' or 'dense'"
        )
    return None


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Nothing to tune: the FlashAttention kernel where it applies, PyTorch's choice elsewhere."""
    return [{}]


def _use_flash(q: torch.Tensor) -> bool:
    d = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in FLASH_DTYPES
        and d <= FLASH_MAX_HEAD_DIM
        and d % FLASH_HEAD_DIM_MULTIPLE == 0
    )


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] over a full or causal ``layout``."""
    kind = dense_kind(layout)
    if kind is None:
        raise BackendUnavailable(f"backend 'sdpa' cannot run this layout: {supports(layout)}")
    causal = kind == "causal"
    if _use_flash(q):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
