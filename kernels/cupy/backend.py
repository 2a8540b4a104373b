"""Backend ``cupy``: the registry's interface (stbench/backends.py) over CUDA C++ block-sparse
attention launched through ``cupy.RawModule``.

Kernels (this folder's ``.cu`` files, compiled by NVRTC, see ``compile.py``):

- ``mma``: float16 / bfloat16 on tensor cores (mma.sync m16n8k16, fp32 accumulation), online
  softmax with the log-sum-exp saved for the backward pass; backward in two kernels, dQ walking
  the plan's row lists and dK/dV walking its transposed column lists, both recomputing the
  scores from the saved lse. K/V (Q/dO) chunks stream through two shared-memory stages
  (cp.async), B fragments come through ldmatrix. One warp per WARP_M (16 or 32) query rows in
  the forward, per 16 rows in the backward.
- ``scalar``: plain fp32 FMA, any of float32 / float16 / bfloat16, head dim up to 128; the
  float32 path and the simple cross-check of the tensor-core kernels.
- ``wgmma`` (by config; not in ``config_space``: 3-5% slower than the best ``mma`` tiles on
  the H200): the forward on Hopper's warpgroup MMA (``st_fwd_wgmma.cu``, sm_90a, compute
  capability 9.0 only), 16-bit inputs, head dim 64, a warpgroup per 64 query rows (BLOCK_M 64
  or 128), 64 keys per step; the backward is ``mma``'s.

Both read the shared device plan (``stbench.layouts.plan_for``) and fold the strided transpose's
permutation into their row indexing, so q, k, v, out and the gradients stay in original token
order and nothing is permuted in memory; every launch goes on torch's current CUDA stream.
``prepare(layout, q, config)`` plans and compiles ahead of timing.

Modules: ``backend`` (this interface), ``config`` (configurations, validation, the tuner's
space), ``compile`` (kernel variants, their source and NVRTC modules), ``kernel_args``
(variants of a config, launch geometry, argument lists), ``launcher`` (the GPU launches, zero-copy pointers),
``op`` (autograd), ``emulate`` (the kernels on the CPU, for tests), ``checks`` (correctness
checks against the dense reference). Kernel notes and measurements: NOTES.md.
"""

from __future__ import annotations

import torch

from stbench.errors import BackendUnavailable
from stbench.layouts import Layout

from .compile import DTYPE_CODES
from .config import config_space, resolve_config  # noqa: F401  (config_space: the interface)
from .launcher import launcher_for
from .op import CupyAttention

INSTALL_HINT = "pip install 'stbench[cupy]' (the cupy-cuda13x wheel; cupy-cuda12x for CUDA 12)"


# ------------------------------------------------------------------ availability
def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'cupy' needs CuPy, which failed to import ({exc}): "
                                 f"{INSTALL_HINT}") from None
    return cupy


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    """Raise BackendUnavailable unless the kernels can run on ``device`` with ``dtype``."""
    _import_cupy()
    device = torch.device(device)
    if dtype not in DTYPE_CODES:
        raise BackendUnavailable(
            f"backend 'cupy' does not support dtype {dtype}: use torch.float16, torch.bfloat16 "
            "or torch.float32 (or backend='dense' for float64)"
        )
    if device.type != "cuda":
        raise BackendUnavailable(
            f"backend 'cupy' runs on CUDA GPUs only, got device {device}: move q, k, v to "
            "'cuda', or use backend='dense' on the CPU"
        )
    if not torch.cuda.is_available():
        raise BackendUnavailable("backend 'cupy' needs a CUDA GPU, and torch sees none here")


def supports(layout: Layout) -> str | None:
    """Every Layout runs (any block 16..128, permutation, partial blocks)."""
    return None


def _resolve_for(q: torch.Tensor, layout: Layout, config: dict | None) -> dict:
    cap = torch.cuda.get_device_capability(q.device)
    return resolve_config(config, layout.block, q.shape[-1], q.dtype, cap)


def prepare(layout: Layout, q: torch.Tensor, config: dict | None = None,
            backward: bool = True) -> dict:
    """Plan and compile (forward and backward kernels) for ``q``'s shape, dtype and device ahead
    of timing (``prepare_ms``); returns the resolved config. ``backward`` is accepted for the
    triton backend's signature: the backward module is always compiled with the forward."""
    check_available(q.device, q.dtype)
    cfg = _resolve_for(q, layout, config)
    launcher_for(layout, tuple(q.shape), q.dtype, q.device, tuple(sorted(cfg.items())))
    return cfg


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """out [B, H, N, D] = block-sparse attention of q, k, v [B, H, N, D] over ``layout``
    (semantics of DESIGN.md; rows with no allowed key are 0); differentiable in q, k, v."""
    check_available(q.device, q.dtype)
    cfg = _resolve_for(q, layout, config)
    launcher = launcher_for(layout, tuple(q.shape), q.dtype, q.device, tuple(sorted(cfg.items())))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return CupyAttention.apply(q, k, v, launcher, float(scale))
    return launcher.forward(q, k, v, float(scale))[0]
