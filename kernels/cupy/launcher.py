"""The CuPy backend's launcher on the GPU: compiled kernels, the plan's arrays and the launch
geometry of one (layout, shapes, config), and the forward and backward launches on torch's
current CUDA stream.

Tensors stay torch tensors and reach the kernels zero-copy as their device addresses (a DLPack
hand-over, ``cupy.from_dlpack``, costs 35 us of host time per tensor on the H200 host: 5
tensors a forward, 18 a backward). Memory beyond inputs, outputs and gradients: lse and delta,
4 B each per (b, h, token).
"""

from __future__ import annotations

import functools

import torch

from stbench.layouts import Layout, plan_for

from .kernel_args import (
    KERNEL_NAMES, LOG2E, delta_args, delta_geometry, dkv_args, dq_args, fwd_args,
    launch_geometry, plan_args, plan_flags, variants_for,
)
from .compile import get_kernel


@functools.lru_cache(maxsize=8)
def _dummy(device: torch.device) -> torch.Tensor:
    """A 1-element int32 tensor passed where a plan array is empty or absent (never read)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _ptr(t: torch.Tensor | None, device: torch.device) -> int:
    """The device address of ``t`` as a kernel pointer argument (CuPy packs a Python int as 8
    bytes): zero-copy, 0.3 us against 35 us for a DLPack export and ``cupy.from_dlpack``
    (measured on the H200 host: reports/kernel-variants/h200/cupy_dlpack_cost.jsonl). The caller keeps ``t`` alive across the
    launch; an absent or empty array is a 1-element dummy (never read)."""
    if t is None or t.numel() == 0:
        t = _dummy(device)
    return t.data_ptr()


@functools.lru_cache(maxsize=16)
def _cupy_stream(ptr: int, device_index: int):
    """torch's CUDA stream ``ptr`` as a CuPy stream object (created once per stream)."""
    import cupy

    return cupy.cuda.ExternalStream(ptr, device_index)


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 16-byte aligned (the kernels load rows 16 bytes at a time; a view
    with a storage offset may not be)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


class Launcher:
    """Everything one (layout, shapes, config) needs to launch: kernels, plan arrays, grid."""

    def __init__(self, shape: tuple, dtype: torch.dtype, device: torch.device, layout: Layout,
                 cfg: dict):
        import cupy
        import numpy as np

        b, h, n, d = shape
        self.device = device
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.cfg = cfg
        self.plan = plan_for(layout, device)
        fwd_v, bwd_v = variants_for(cfg, dtype, d, layout.block, *plan_flags(self.plan))
        fwd_name, dq_name, dkv_name = KERNEL_NAMES[cfg["kernel"]]
        self.fwd = get_kernel(fwd_v, fwd_name, self.index)
        # the backward module compiles here too, so prepare() takes all compilation out of the
        # timed region
        self.dq_k = get_kernel(bwd_v, dq_name, self.index)
        self.dkv_k = get_kernel(bwd_v, dkv_name, self.index)
        self.delta_k = get_kernel(bwd_v, "st_bwd_delta", self.index)
        self.delta_grid, self.delta_block = delta_geometry(b * h * n)
        self.grid, self.fwd_block, self.bwd_block = launch_geometry(cfg, n, b * h)
        # the plan arrays as pointers; the tensors behind them (plan_args may convert) are kept
        self._plan_tensors = []

        def keep(t):
            if t is not None:
                self._plan_tensors.append(t)
            return _ptr(t, device)

        self.fwd_plan, self.bwd_plan = plan_args(self.plan, keep)
        self.ints = (np.int32(h), np.int32(n))
        self._np = np
        self._cupy = cupy

    def _launch(self, kernel, grid, block, args):
        """``kernel`` on torch's current stream of this device (arguments: pointers and numpy
        scalars)."""
        stream = _cupy_stream(torch.cuda.current_stream(self.device).cuda_stream, self.index)
        with self._cupy.cuda.Device(self.index):
            kernel.kernel(grid, block, args, 0, stream)

    def forward(self, q, k, v, scale: float):
        """q, k, v [B, H, N, D] -> (out [B, H, N, D], lse float32 [B, H, N], base-2 units)."""
        q, k, v = aligned(q), aligned(k), aligned(v)
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        a = functools.partial(_ptr, device=q.device)
        self._launch(self.fwd, self.grid, self.fwd_block,
                     fwd_args(a, q, k, v, out, lse, self.fwd_plan, self.ints,
                              self._np.float32(scale * LOG2E)))
        return out, lse

    def backward(self, q, k, v, out, lse, dout, scale: float):
        """Gradients (dq, dk, dv) for upstream ``dout``; all [B, H, N, D], q, k, v, out
        contiguous and 16-byte aligned (as ``forward`` leaves them)."""
        dout = aligned(dout)
        delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        a = functools.partial(_ptr, device=q.device)
        ints, sc, sl2 = self.ints, self._np.float32(scale), self._np.float32(scale * LOG2E)
        self._launch(self.delta_k, self.delta_grid, self.delta_block,
                     delta_args(a, dout, out, delta, self._np.int32(delta.numel())))
        self._launch(self.dq_k, self.grid, self.bwd_block,
                     dq_args(a, q, k, v, dout, lse, delta, dq, self.fwd_plan, ints, sc, sl2))
        self._launch(self.dkv_k, self.grid, self.bwd_block,
                     dkv_args(a, q, k, v, dout, lse, delta, dk, dv, self.bwd_plan, ints, sc,
                              sl2))
        return dq, dk, dv


@functools.lru_cache(maxsize=64)
def launcher_for(layout: Layout, shape: tuple, dtype: torch.dtype, device: torch.device,
                 cfg_items: tuple) -> Launcher:
    """The cached Launcher of ``layout`` for q's ``shape``, ``dtype`` and ``device`` under the
    resolved config ``dict(cfg_items)``: planning and compilation happen once."""
    return Launcher(shape, dtype, device, layout, dict(cfg_items))
