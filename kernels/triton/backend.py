"""Backend ``triton``: the registry's interface (stbench/backends.py) over the Triton kernels.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set
before triton is imported; slow, for tests). fp16, bf16, fp32 (tf32 off unless
``allow_tf32``); head dims 32, 64, 128; any B and H; every layout the generators make,
permuted (strided transpose) or not, at block 16..128.
"""

from __future__ import annotations

import functools
import json
import os

import torch

from stbench.backends import BackendUnavailable

from .config import HEAD_DIMS, KernelConfig, config_space, default_config  # noqa: F401

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    """Raise BackendUnavailable unless the kernels can run on ``device`` in ``dtype``."""
    device = torch.device(device)
    if dtype not in DTYPES:
        raise BackendUnavailable(
            f"backend 'triton' does not support dtype={dtype}: use float16, bfloat16 or float32"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'triton': CUDA is not available on this machine")
    elif device.type == "cpu":
        if not _interpreting():
            raise BackendUnavailable(
                "backend 'triton' needs CUDA tensors: set TRITON_INTERPRET=1 before importing "
                "triton to run on CPU, slowly"
            )
    else:
        raise BackendUnavailable(f"backend 'triton' does not run on device {device.type!r}")


def supports(layout) -> str | None:
    """Every layout runs (tiles adapt to the block); None."""
    return None


def check_head_dim(head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"head_dim={head_dim} is not supported by backend 'triton': use one of {HEAD_DIMS} "
            "(pad q, k, v with zeros to the next one, or use backend='dense')"
        )


def resolve_config(layout, head_dim: int, dtype: torch.dtype, config: dict | None) -> KernelConfig:
    """The default config for this problem, overridden by the (partial) ``config`` dict."""
    base = default_config(layout, head_dim, dtype).as_dict()
    return KernelConfig.from_dict({**base, **(config or {})})


@torch.compiler.assume_constant_result
def _op_key(layout) -> str:
    """The layout's key for the custom op (registers it); a compile-time constant."""
    from .op import register_layout

    return register_layout(layout)


@torch.compiler.assume_constant_result
def _op_config(layout, head_dim: int, dtype: torch.dtype, config: dict | None) -> str:
    """The resolved config as JSON; a compile-time constant."""
    items = tuple(sorted((config or {}).items()))
    return _config_json(layout.content_hash, layout, head_dim, dtype, items)


@functools.lru_cache(maxsize=256)
def _config_json(key, layout, head_dim, dtype, items) -> str:
    cfg = resolve_config(layout, head_dim, dtype, dict(items))
    return json.dumps(cfg.as_dict(), sort_keys=True)


def attention(q, k, v, layout, scale: float, config: dict | None = None) -> torch.Tensor:
    """q, k, v [B, H, N, D] -> out [B, H, N, D] (DESIGN.md semantics), differentiable.
    Host-side work (config, layout key) is constant under torch.compile; the kernels run
    through the custom op ``stbench::triton_sparse_attn``."""
    from .op import apply  # lazy: imports triton

    check_available(q.device, q.dtype)
    check_head_dim(q.shape[-1])
    key = _op_key(layout)
    cfg = _op_config(layout, q.shape[-1], q.dtype, config)
    return apply(q, k, v, key, float(scale), cfg)


def prepare(layout, q: torch.Tensor, config: dict | None = None, backward: bool = True) -> None:
    """Build the plan and tile lists ahead of timing (they are cached)."""
    from .op import prepare as op_prepare

    cfg = resolve_config(layout, q.shape[-1], q.dtype, config)
    op_prepare(layout, cfg, q.device, backward_too=backward)
