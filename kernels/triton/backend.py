"""Backend ``triton``: the registry's interface (stbench/backends.py) over the Triton kernels.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set
before triton is imported; slow, for tests). fp16, bf16, fp32 (tf32 off unless
``allow_tf32``); head dims 32, 64, 128; any B and H; every layout the generators make,
permuted (strided transpose) or not, at block 16..128.
"""

from __future__ import annotations

import json
import os

import torch

from stbench.errors import BackendUnavailable

from .config import (  # noqa: F401
    HEAD_DIMS, TMA_CANDIDATES, KernelConfig, config_space, default_config,
    tma_tiles_fit,
)

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
            "(pad q, k, v with zeros to the next one and pass scale=1/sqrt(original head_dim), "
            "or use backend='dense')"
        )


def resolve_config(layout, head_dim: int, dtype: torch.dtype, config: dict | None) -> KernelConfig:
    """The default config for this problem, overridden by the (partial) ``config`` dict. The
    default's TMA forward loads fall back to the gather when the overridden tiles do not allow
    them (``config`` naming ``fwd_loads`` itself is taken as given, and checked at launch)."""
    base = default_config(layout, head_dim, dtype).as_dict()
    cfg = KernelConfig.from_dict({**base, **(config or {})})
    if "fwd_loads" not in (config or {}) and cfg.fwd_loads == "tma" and (
            not tma_tiles_fit(layout, cfg.BLOCK_M, cfg.BLOCK_N)):
        cfg = KernelConfig.from_dict({**cfg.as_dict(), "fwd_loads": "gather"})
    return cfg


# (layout content hash, head dim, dtype, config items) -> (op layout key, resolved config JSON),
# filled by eager calls and ``prepare``; read (a plain dict lookup) inside torch.compile
_OP_ARGS: dict[tuple, tuple[str, str]] = {}


def _op_args_key(layout, head_dim: int, dtype: torch.dtype, config: dict | None) -> tuple:
    return (layout.content_hash, int(head_dim), str(dtype), tuple(sorted((config or {}).items())))


def _op_args(layout, head_dim: int, dtype: torch.dtype, config: dict | None) -> tuple[str, str]:
    """Register the layout with the op and resolve the config (host work, once per problem)."""
    from .op import register_layout

    k = _op_args_key(layout, head_dim, dtype, config)
    args = _OP_ARGS.get(k)
    if args is None:
        cfg = resolve_config(layout, head_dim, dtype, config)
        args = (register_layout(layout), json.dumps(cfg.as_dict(), sort_keys=True))
        _OP_ARGS[k] = args
    return args


def attention(q, k, v, layout, scale: float, config: dict | None = None) -> torch.Tensor:
    """q, k, v [B, H, N, D] -> out [B, H, N, D] (DESIGN.md semantics), differentiable.

    Eager: an autograd.Function. Inside torch.compile: the custom op
    ``stbench::triton_sparse_attn`` (no graph break); the host work must have run once before
    compiling (one eager call, or ``prepare(layout, q, config)``), since torch.compile cannot
    trace it."""
    from .op import apply  # lazy: imports triton

    if torch.compiler.is_compiling():
        args = _OP_ARGS.get(_op_args_key(layout, q.shape[-1], q.dtype, config))
        if args is None:
            raise RuntimeError(
                "backend 'triton' under torch.compile: call "
                "stbench.kernels.triton.backend.prepare(layout, q, config) (or run the model "
                "once eagerly) before compiling"
            )
    else:
        check_available(q.device, q.dtype)
        check_head_dim(q.shape[-1])
        args = _op_args(layout, q.shape[-1], q.dtype, config)
    return apply(q, k, v, args[0], float(scale), args[1])


def prepare(layout, q: torch.Tensor, config: dict | None = None, backward: bool = True) -> None:
    """Do the host work ahead of timing or torch.compile: register the layout, resolve the
    config, build the plan and tile lists (all cached)."""
    from .op import _prepared

    check_available(q.device, q.dtype)
    check_head_dim(q.shape[-1])
    key, cfg_json = _op_args(layout, q.shape[-1], q.dtype, config)
    _prepared(key, cfg_json, str(q.device), backward)
