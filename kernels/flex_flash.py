"""Peer backend ``flex_flash``: FlexAttention with ``kernel_options={"BACKEND": "FLASH"}``.

The same BlockMask as ``flex`` (``flex.flex_layout``: built from the device plan, the band
mask_mod where it is exact) and the same permutation gathers, run through FlexAttention's FLASH
backend: inductor lowers the mask_mod to CuTe DSL and calls FlashAttention-4's kernels with the
BlockMask's lists as block-sparse tensors (torch 2.11:
``torch/_inductor/kernel/flex/flex_flash_attention.py``).

Limits in torch 2.11 with flash-attn-4 4.0.0b36 on sm90, each a ``supports`` or
``BackendUnavailable`` reason:

- fp16 / bf16 only, head dim 8..128 in steps of 8 (FA4's block-sparse sm90 tiles, see
  ``kernels/fa4.py``);
- the BlockMask's block is FA4's sparse block: 64 or 128 for the forward, 128 for the backward;
  layouts at other blocks are re-blocked exactly to 128 first (``flex`` already does so for its
  backward; ``config={"block": b}`` forces a block);
- the mask_mod must lower to CuTe DSL: the band ``lo[h] <= q - k < hi[h]`` does (subtraction,
  comparisons, a load per head). ``flex``'s table mask_mod, needed where no band is exact
  (merged strided heads, random partial blocks), does not: it uses ``torch.clamp``, which
  lowers to ``maximum``, and byte-wide (uint8) loads; torch 2.11's CuTe DSL op overrides raise
  NotImplementedError for ``maximum`` / ``minimum``. Such layouts are refused;
- no deterministic backward with a block mask (``torch.use_deterministic_algorithms``).

Availability: flash-attn-4 importable (``pip install 'stbench[fa4]'``), a CUDA GPU of compute
capability 9.0 or newer. Memory: as ``flex``, plus FA4's log-sum-exp (B H N float32).
"""

from __future__ import annotations

import torch

from stbench.backends import BackendUnavailable
from stbench.kernels import fa4, flex
from stbench.layouts import FULL, Layout

KERNEL_BACKEND = "FLASH"


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    fa4.require_flash_cute("flex_flash", device, dtype)


def supports(layout: Layout) -> str | None:
    why = fa4.sparse_block_reason(layout)
    if why is not None:
        return why
    if bool((layout.pat_kinds != FULL).any()) and flex.band_bounds(layout) is None:
        return ("its masked blocks need flex's table mask_mod (no band lo <= q - k < hi is "
                "exact), which torch 2.11's CuTe DSL lowering cannot compile (torch.clamp -> "
                "maximum, uint8 loads): use 'fa4', 'flex' or 'triton'")
    return None


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """As ``fa4.config_space``: the block (64 or 128) is the only axis."""
    return fa4.config_space(layout, head_dim, dtype)


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] through compiled FlexAttention's FLASH backend."""
    config = dict(config or {})
    unknown = set(config) - set(fa4.CONFIG_KEYS)
    if unknown:
        raise ValueError(f"config keys {sorted(unknown)} are unknown to backend 'flex_flash': "
                         f"use {', '.join(fa4.CONFIG_KEYS)}")
    why = fa4.head_dim_reason(q.shape[-1], sparse=True)
    if why is not None:
        raise BackendUnavailable(f"backend 'flex_flash' cannot run this problem: {why}")
    layout = fa4.sparse_layout("flex_flash", layout, config, fa4.wants_grad(q, k, v))
    why = supports(layout)
    if why is not None:
        raise BackendUnavailable(f"backend 'flex_flash' cannot run this layout: {why}")
    return flex.flex_forward(q, k, v, layout, scale, compiled=True, kernel_backend=KERNEL_BACKEND)


def structure_bytes(layout: Layout, device, config: dict | None = None,
                    grad: bool = False) -> int:
    """As ``flex.structure_bytes`` (the same BlockMask), at the block this backend runs."""
    lay = fa4.sparse_layout("flex_flash", layout, dict(config or {}), grad)
    return flex.structure_bytes(lay, device, None, grad)
