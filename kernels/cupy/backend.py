"""The ``cupy`` backend: CUDA C++ block-sparse attention launched through ``cupy.RawModule``.

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
order and nothing is permuted in memory. Tensors stay torch tensors and reach the kernels
zero-copy as their device addresses (the DLPack hand-over used before, ``cupy.from_dlpack``,
measured 35 us of host time per tensor on the H200 host: 5 tensors a forward, 18 a backward),
and every launch goes on torch's current CUDA stream. Memory beyond inputs, outputs and
gradients: lse and delta, 4 B each per (b, h, token).

Config (``config_space``): ``{"kernel": "mma", "BLOCK_M": m, "BLOCK_N": n, "WARP_M": w}`` with
m, n tile sizes dividing the layout block (forward warps m / w, backward m / 16; the backward
streams min(n, bwd_max_block_n) rows), ``{"kernel": "wgmma", "BLOCK_M": 64 or 128}`` (compute
capability 9.0), or ``{"kernel": "scalar"}`` (in the tuner's space only where the tensor cores
cannot run; any config can be asked for). ``prepare(layout, q, config)`` compiles ahead of timing.
"""

from __future__ import annotations

import functools

import torch

from stbench.backends import BackendUnavailable
from stbench.layouts import PARTIAL, Layout, Plan, plan_for

from .compile import (
    DELTA_ROWS,
    DTYPE_CODES,
    MMA_MAX_HEAD_DIM,
    SCALAR_MAX_HEAD_DIM,
    SCALAR_ROWS,
    Variant,
    get_kernel,
)

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E): the kernels work in base 2
MMA_MIN_CAPABILITY = (8, 0)  # mma.sync with bf16 and cvt.rn.bf16x2 need sm_80
MMA_TILES = (16, 32, 64, 128)
# the wgmma forward (st_fwd_wgmma.cu): sm_90a code runs on compute capability 9.0 only; its
# m64n64k16 products fix the head dim and both tiles at 64, one warpgroup (128 threads) a CTA
WGMMA_CAPABILITY = (9, 0)
WGMMA_HEAD_DIM = 64
WGMMA_TILE = 64  # keys a step, and query rows a warpgroup (128 threads)
WGMMA_BLOCK_M = (64, 128)
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


# ------------------------------------------------------------------ configurations
WARP_ROWS = (16, 32)  # query rows per warp in the forward kernel (1 or 2 mma row tiles)
WARP_32_MAX_HEAD_DIM = 64  # 32 rows per warp doubles Q / O / S registers: D <= 64 only
# WARP_M = 32 with BLOCK_N = 128 holds 32 (Q) + 64 (O) + 128 (S) fragment words per thread:
# ptxas spills 1.2 KB at D = 64 (session 5), so the space stops 32-row warps at BLOCK_N = 64
WARP_32_MAX_BLOCK_N = 64


def fwd_max_block_n(head_dim: int) -> int:
    """Largest BLOCK_N of the forward space: 128 at D <= 64 (one K / V stage, 37 KB of shared
    memory, 180 registers at WARP_M = 16), 32 above (registers)."""
    return 128 if head_dim <= 64 else 32


def bwd_max_block_n(head_dim: int) -> int:
    """Largest BLOCK_N the backward kernels take: two stages of two [BLOCK_N, D + 8] tiles in
    48 KB of static shared memory, and the dK / dV kernel's registers (255 at D = 64, BLOCK_N
    = 64): 64 at D <= 64, 32 above. A config's BLOCK_N is clamped to it for the backward."""
    return 64 if head_dim <= 64 else 32


def _default_mma(block: int, head_dim: int) -> dict:
    return {"kernel": "mma", "BLOCK_M": min(64, block),
            "BLOCK_N": min(64 if head_dim <= 64 else 32, block), "WARP_M": 16}


def mma_possible(head_dim: int, dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16) and head_dim % 16 == 0 \
        and head_dim <= MMA_MAX_HEAD_DIM


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Tunable configurations: tensor-core tiles (BLOCK_M rows owned, BLOCK_N rows streamed,
    both dividing the layout block; BLOCK_N <= fwd_max_block_n (128 at head dim <= 64, else 32),
    the backward clamped to bwd_max_block_n; WARP_M query rows per warp in the forward kernel,
    32 only at head dim <= 64 and BLOCK_N <= 64, for registers); the scalar
    kernel only where the tensor cores cannot run (fp32, head dims not a multiple of 16): on
    16-bit inputs it never wins (724 ms against 24.6 ms for the mma kernel, causal N = 65536
    forward, reports/session4/sweep_partial/) and the local search would spend a start on it.
    Warps per CTA: BLOCK_M / WARP_M forward, BLOCK_M / 16 backward. The default comes first:
    the tuner's local search starts from the first candidate of each layout block (session 5's
    sweep started from 16 x 16 tiles, the slowest, and picked 26.7 ms for causal N = 65536
    where 128 x 64 tiles at 32 rows per warp run 18.5 ms). The wgmma forward
    (``{"kernel": "wgmma", "BLOCK_M": 128 or 64}``) is left out: on the H200 it ran 3-5% slower
    than the best mma.sync tiles on causal / fixed at N = 16384 and 65536 (kernels/cupy/NOTES.md,
    session 6), so it would only spend the tuner's evaluations; ask for it by config."""
    space = []
    if mma_possible(head_dim, dtype):
        space.append(_default_mma(layout.block, head_dim))
        b = layout.block
        n_max = fwd_max_block_n(head_dim)
        for m in MMA_TILES:
            for n in MMA_TILES:
                if m <= b and n <= b and n <= n_max:
                    for w in WARP_ROWS:
                        if m % w == 0 and (w == 16 or (head_dim <= WARP_32_MAX_HEAD_DIM
                                                       and n <= WARP_32_MAX_BLOCK_N)):
                            cfg = {"kernel": "mma", "BLOCK_M": m, "BLOCK_N": n, "WARP_M": w}
                            if cfg != space[0]:
                                space.append(cfg)
    elif head_dim <= SCALAR_MAX_HEAD_DIM:
        space.append({"kernel": "scalar"})
    return space


def resolve_config(config: dict | None, block: int, head_dim: int, dtype: torch.dtype,
                   capability: tuple[int, int] = MMA_MIN_CAPABILITY) -> dict:
    """The validated config to run (``None``: the default for these shapes) on a GPU of compute
    capability ``capability``; ValueError / BackendUnavailable name the bad key and the fix."""
    mma_ok = mma_possible(head_dim, dtype) and tuple(capability) >= MMA_MIN_CAPABILITY
    if config is None:
        if mma_ok:
            return _default_mma(block, head_dim)
        config = {"kernel": "scalar"}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    kernel = config.get("kernel", "mma")
    if kernel == "scalar":
        if head_dim > SCALAR_MAX_HEAD_DIM:
            raise BackendUnavailable(
                f"backend 'cupy' supports head dim <= {SCALAR_MAX_HEAD_DIM}, got {head_dim}: "
                "split the head or use backend='dense'"
            )
        unknown = set(config) - {"kernel"}
        if unknown:
            raise ValueError(f"config keys {sorted(unknown)} do not apply to kernel 'scalar'")
        return {"kernel": "scalar"}
    if kernel == "wgmma":
        return _resolve_wgmma(config, block, head_dim, dtype, capability)
    if kernel != "mma":
        raise ValueError(f"config['kernel']={kernel!r}: use 'mma', 'scalar' or 'wgmma'")
    if not mma_ok:
        raise BackendUnavailable(
            f"the tensor-core kernel needs float16/bfloat16, head dim a multiple of 16 up to "
            f"{MMA_MAX_HEAD_DIM} and a GPU of compute capability >= 8.0; got {dtype}, "
            f"head dim {head_dim}: use config={{'kernel': 'scalar'}}"
        )
    out = dict(_default_mma(block, head_dim))
    for key in ("BLOCK_M", "BLOCK_N"):
        if key in config:
            val = config[key]
            if val not in MMA_TILES or val > block:
                raise ValueError(
                    f"config[{key!r}]={val!r} must be one of {MMA_TILES} and at most the "
                    f"layout block {block}"
                )
            out[key] = val
    w = config.get("WARP_M", 16)
    if w not in WARP_ROWS or out["BLOCK_M"] % w:
        raise ValueError(f"config['WARP_M']={w!r} must be one of {WARP_ROWS} and divide BLOCK_M")
    if w > 16 and head_dim > WARP_32_MAX_HEAD_DIM:
        raise ValueError(f"config['WARP_M']={w} needs head dim <= {WARP_32_MAX_HEAD_DIM} "
                         f"(registers), got {head_dim}: use WARP_M=16")
    out["WARP_M"] = w
    unknown = set(config) - {"kernel", "BLOCK_M", "BLOCK_N", "WARP_M"}
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}: use kernel, BLOCK_M, BLOCK_N, WARP_M"
        )
    return out


def _resolve_wgmma(config: dict, block: int, head_dim: int, dtype: torch.dtype,
                   capability: tuple[int, int]) -> dict:
    """The validated ``{"kernel": "wgmma", "BLOCK_M": 64 or 128}`` config (a warpgroup per 64
    query rows; BLOCK_N is fixed at WGMMA_TILE and may be given only as that)."""
    if dtype not in (torch.float16, torch.bfloat16) or head_dim != WGMMA_HEAD_DIM:
        raise BackendUnavailable(
            f"the wgmma kernel needs float16/bfloat16 and head dim {WGMMA_HEAD_DIM}; got {dtype}, "
            f"head dim {head_dim}: use config={{'kernel': 'mma'}}"
        )
    if tuple(capability) != WGMMA_CAPABILITY:
        raise BackendUnavailable(
            f"the wgmma kernel is sm_90a code, which runs on compute capability "
            f"{WGMMA_CAPABILITY[0]}.{WGMMA_CAPABILITY[1]} (H100 / H200) only; this GPU is "
            f"{capability[0]}.{capability[1]}: use config={{'kernel': 'mma'}}"
        )
    m = config.get("BLOCK_M", WGMMA_TILE)
    if m not in WGMMA_BLOCK_M:
        raise ValueError(f"config['BLOCK_M']={m!r}: the wgmma kernel takes BLOCK_M in "
                         f"{WGMMA_BLOCK_M} (a warpgroup per {WGMMA_TILE} rows)")
    if block % m:
        raise ValueError(
            f"the wgmma kernel's {m}-row tiles need a layout block that is a multiple of {m}, "
            f"got {block}: re-block the layout, use a smaller BLOCK_M or config={{'kernel': 'mma'}}"
        )
    if config.get("BLOCK_N", WGMMA_TILE) != WGMMA_TILE:
        raise ValueError(f"config['BLOCK_N']={config['BLOCK_N']!r}: the wgmma kernel streams "
                         f"{WGMMA_TILE} keys a step; leave BLOCK_N out")
    unknown = set(config) - {"kernel", "BLOCK_M", "BLOCK_N"}
    if unknown:
        raise ValueError(f"config keys {sorted(unknown)} do not apply to kernel 'wgmma': "
                         f"use kernel, BLOCK_M ({WGMMA_BLOCK_M}) and BLOCK_N ({WGMMA_TILE})")
    return {"kernel": "wgmma", "BLOCK_M": m, "BLOCK_N": WGMMA_TILE}


# ------------------------------------------------------------------ launching
@functools.lru_cache(maxsize=8)
def _dummy(device: torch.device) -> torch.Tensor:
    """A 1-element int32 tensor passed where a plan array is empty or absent (never read)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _ptr(t: torch.Tensor | None, device: torch.device) -> int:
    """The device address of ``t`` as a kernel pointer argument (CuPy packs a Python int as 8
    bytes): zero-copy, 0.3 us against 35 us for a DLPack export and ``cupy.from_dlpack``
    (scripts/gpu_dlpack_cost.py on the H200 host). The caller keeps ``t`` alive across the
    launch; an absent or empty array is a 1-element dummy (never read)."""
    if t is None or t.numel() == 0:
        t = _dummy(device)
    return t.data_ptr()


@functools.lru_cache(maxsize=16)
def _cupy_stream(ptr: int, device_index: int):
    """torch's CUDA stream ``ptr`` as a CuPy stream object (created once per stream)."""
    import cupy

    return cupy.cuda.ExternalStream(ptr, device_index)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and 16-byte aligned (the kernels load rows 16 bytes at a time; a view
    with a storage offset may not be)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


@functools.lru_cache(maxsize=64)
def plan_flags(plan: Plan) -> tuple[bool, bool]:
    """(permuted, has_partial) of a plan: the two plan features that select a variant."""
    return plan.perm is not None, bool((plan.col_kind == PARTIAL).any())


def variants_for(cfg: dict, dtype: torch.dtype, head_dim: int, block: int, permuted: bool,
                 partial: bool) -> tuple[Variant, Variant]:
    """(forward, backward) kernel variants a resolved config runs (the same Variant twice for
    the scalar file, which holds both)."""
    code = DTYPE_CODES[dtype]
    if cfg["kernel"] == "scalar":
        v = Variant("scalar", code, head_dim, block, 0, 0, permuted, partial)
        return v, v
    m, n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    fwd = (Variant("fwd_wgmma", code, head_dim, block, m, n, permuted, partial)
           if cfg["kernel"] == "wgmma" else
           Variant("fwd_mma", code, head_dim, block, m, n, permuted, partial,
                   cfg.get("WARP_M", 16) // 16))
    return (fwd,
            Variant("bwd_mma", code, head_dim, block, m, min(n, bwd_max_block_n(head_dim)),
                    permuted, partial))


MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, which runs over batch x heads


def launch_geometry(cfg: dict, n_ctx: int, bh: int) -> tuple[tuple, tuple, tuple]:
    """(grid, forward block, backward block) of ``cfg``'s kernels: grid x over row tiles, y over
    batch x heads; a block has a warp per WARP_M rows (forward; wgmma: one warpgroup) or per
    16 rows (backward)."""
    if bh > MAX_GRID_Y:
        raise ValueError(
            f"batch x heads = {bh} exceeds {MAX_GRID_Y} (CUDA's grid y limit): split the batch"
        )
    if cfg["kernel"] == "scalar":
        threads = (SCALAR_ROWS * 32, 1, 1)
        return (n_ctx // SCALAR_ROWS, bh, 1), threads, threads
    m = cfg["BLOCK_M"]
    fwd_threads = (m // WGMMA_TILE * 128 if cfg["kernel"] == "wgmma"
                   else (m // cfg.get("WARP_M", 16)) * 32)
    return (n_ctx // m, bh, 1), (fwd_threads, 1, 1), ((m // 16) * 32, 1, 1)


# The kernels' view of the plan: field -> element type of its pointer argument
PLAN_FWD = (("head_pattern", torch.int32), ("row_ptr", torch.int32), ("col_idx", torch.int32),
            ("col_kind", torch.int8), ("col_mask", torch.int32), ("masks", torch.int32),
            ("perm", torch.int32), ("pattern_perm", torch.int32))
PLAN_BWD = (("head_pattern", torch.int32), ("col_ptr", torch.int32), ("row_idx", torch.int32),
            ("row_kind", torch.int8), ("row_mask", torch.int32), ("masks", torch.int32),
            ("perm", torch.int32), ("pattern_perm", torch.int32))


def plan_args(plan: Plan, arr) -> tuple[list, list]:
    """(forward, backward) plan arguments of the kernels, each tensor contiguous in the element
    type the kernels read (a no-op for the plan's own int32 / int8 arrays), through ``arr``."""

    def field(name, dtype):
        t = getattr(plan, name)
        return None if t is None else t.to(dtype).contiguous()

    fwd = [arr(field(n, dt)) for n, dt in PLAN_FWD]
    bwd = [arr(field(n, dt)) for n, dt in PLAN_BWD]
    return fwd, bwd


def fwd_args(arr, q, k, v, out, lse, fwd_plan, ints, scale_log2) -> tuple:
    """Arguments of st_fwd_mma / st_fwd_wgmma / st_fwd_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(out), arr(lse), *fwd_plan, *ints, scale_log2)


def dq_args(arr, q, k, v, dout, lse, delta, dq, fwd_plan, ints, scale, scale_log2) -> tuple:
    """Arguments of st_bwd_dq / st_bwd_dq_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(dout), arr(lse), arr(delta), arr(dq), *fwd_plan, *ints,
            scale, scale_log2)


def dkv_args(arr, q, k, v, dout, lse, delta, dk, dv, bwd_plan, ints, scale, scale_log2) -> tuple:
    """Arguments of st_bwd_dkv / st_bwd_dkv_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(dout), arr(lse), arr(delta), arr(dk), arr(dv), *bwd_plan,
            *ints, scale, scale_log2)


def row_delta(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """delta [B, H, N] float32 = rowsum(dO * O), the backward's softmax correction, in torch
    (the reference for the kernel ``st_bwd_delta``, which the backward launches)."""
    return (dout.float() * out.float()).sum(-1)


def delta_geometry(rows: int) -> tuple[tuple, tuple]:
    """(grid, block) of st_bwd_delta over ``rows`` = B * H * N rows: one warp per row."""
    return ((rows + DELTA_ROWS - 1) // DELTA_ROWS, 1, 1), (DELTA_ROWS * 32, 1, 1)


def delta_args(arr, dout, out, delta, rows) -> tuple:
    """Arguments of st_bwd_delta, in its order (``rows``: B * H * N, as the int type of the
    caller's launcher)."""
    return arr(dout), arr(out), arr(delta), rows


KERNEL_NAMES = {
    "mma": ("st_fwd_mma", "st_bwd_dq", "st_bwd_dkv"),
    "scalar": ("st_fwd_scalar", "st_bwd_dq_scalar", "st_bwd_dkv_scalar"),
    "wgmma": ("st_fwd_wgmma", "st_bwd_dq", "st_bwd_dkv"),  # the mma.sync backward
}


class _Launcher:
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
        q, k, v = _aligned(q), _aligned(k), _aligned(v)
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
        dout = _aligned(dout)
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


class _CupyAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, launcher, scale):
        q, k, v = _aligned(q), _aligned(k), _aligned(v)
        out, lse = launcher.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.launcher, ctx.scale = launcher, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.launcher.backward(q, k, v, out, lse, dout.contiguous(), ctx.scale)
        return dq, dk, dv, None, None


@functools.lru_cache(maxsize=64)
def _launcher(layout: Layout, shape: tuple, dtype: torch.dtype, device: torch.device,
              cfg_items: tuple) -> _Launcher:
    return _Launcher(shape, dtype, device, layout, dict(cfg_items))


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
    _launcher(layout, tuple(q.shape), q.dtype, q.device, tuple(sorted(cfg.items())))
    return cfg


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """out [B, H, N, D] = block-sparse attention of q, k, v [B, H, N, D] over ``layout``
    (semantics of DESIGN.md; rows with no allowed key are 0); differentiable in q, k, v."""
    check_available(q.device, q.dtype)
    cfg = _resolve_for(q, layout, config)
    launcher = _launcher(layout, tuple(q.shape), q.dtype, q.device, tuple(sorted(cfg.items())))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _CupyAttention.apply(q, k, v, launcher, float(scale))
    return launcher.forward(q, k, v, float(scale))[0]
