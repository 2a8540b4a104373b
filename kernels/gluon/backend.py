"""Backend ``gluon``: the registry's interface (stbench/backends.py) over the Gluon kernels.

Runs where the hand-scheduled Hopper forward applies: CUDA tensors on an sm_90 GPU, float16 /
bfloat16, head dims 64 and 128, layouts at block 128 without a token permutation (every key
tile one TMA box of consecutive rows). Elsewhere ``check_available`` / ``supports`` say why,
and the Triton backend runs those problems. The backward reuses the Triton backend's kernels
with the backward fields of its config (kernels/gluon/config.py, kernels/gluon/op.py).
"""

from __future__ import annotations

import importlib.util

import torch

from stbench.backends import BackendUnavailable

from .config import config_space, resolve_config  # noqa: F401 (config_space: the registry interface)

DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128)
LAYOUT_BLOCK = 128  # key tiles are whole layout blocks: BLOCK_N of forward.py
CAPABILITY = (9, 0)  # Hopper: warpgroup MMA, TMA, setmaxnreg


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    """Raise BackendUnavailable unless the Gluon forward can run on ``device`` in ``dtype``."""
    device = torch.device(device)
    if dtype not in DTYPES:
        raise BackendUnavailable(
            f"backend 'gluon' does not support dtype={dtype}: use float16 or bfloat16 "
            "(or backend='triton', which runs every dtype)"
        )
    if device.type != "cuda":
        raise BackendUnavailable(
            "backend 'gluon' needs CUDA tensors on a Hopper (sm_90) GPU: use backend='triton' "
            "elsewhere"
        )
    if not torch.cuda.is_available():
        raise BackendUnavailable("backend 'gluon': CUDA is not available on this machine")
    if importlib.util.find_spec("triton.experimental.gluon") is None:
        raise BackendUnavailable("backend 'gluon' needs triton.experimental.gluon: "
                                 "pip install 'triton>=3.5'")
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) != CAPABILITY:
        raise BackendUnavailable(
            f"backend 'gluon' is built for Hopper (compute capability 9.0), this GPU is "
            f"{cap[0]}.{cap[1]}: use backend='triton'"
        )


def supports(layout) -> str | None:
    """None if the forward can run ``layout``, else why not (the Triton backend runs it)."""
    if layout.block != LAYOUT_BLOCK:
        return (f"layout block {layout.block}: the gluon forward loads whole blocks of "
                f"{LAYOUT_BLOCK} keys (layout.reblock({LAYOUT_BLOCK}) where exact, or "
                "backend='triton')")
    if layout.perms is not None:
        return ("the layout permutes tokens (strided transpose): the gluon forward loads "
                "consecutive rows by TMA; use backend='triton'")
    return None


def check_head_dim(head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"head_dim={head_dim} is not supported by backend 'gluon': use one of {HEAD_DIMS}, "
            "or backend='triton'"
        )


def _check(q, layout) -> None:
    check_available(q.device, q.dtype)
    check_head_dim(q.shape[-1])
    why = supports(layout)
    if why is not None:
        raise BackendUnavailable(f"backend 'gluon' cannot run this layout: {why}")


def attention(q, k, v, layout, scale: float, config: dict | None = None) -> torch.Tensor:
    """q, k, v [B, H, N, D] -> out [B, H, N, D] (DESIGN.md semantics), differentiable (the
    backward through the Triton backend's kernels)."""
    from .op import apply  # lazy: imports triton and gluon

    _check(q, layout)
    return apply(q, k, v, layout, float(scale), resolve_config(q.shape[-1], config))


def prepare(layout, q: torch.Tensor, config: dict | None = None, backward: bool = True) -> None:
    """Build the plan and tile lists (cached) ahead of timing."""
    from .op import prepare as prepare_op

    _check(q, layout)
    prepare_op(layout, q, resolve_config(q.shape[-1], config), backward)
