"""Tunables of the CuPy backend: its configurations, their validation and the tuner's space.

A config is a dict: ``{"kernel": "mma", "BLOCK_M": m, "BLOCK_N": n, "WARP_M": w}`` (tensor-core
tiles: m rows owned by a CTA, n rows streamed a step, both dividing the layout block; forward
warps m / w, backward m / 16; the backward streams min(n, bwd_max_block_n) rows),
``{"kernel": "wgmma", "BLOCK_M": 64 or 128}`` (the Hopper forward, compute capability 9.0), or
``{"kernel": "scalar"}`` (fp32 FMA, any dtype). ``resolve_config`` validates one against the
problem and the GPU; ``config_space`` lists what the autotuner tries.
"""

from __future__ import annotations

import torch

from stbench.errors import BackendUnavailable
from stbench.layouts import Layout

from .compile import MMA_MAX_HEAD_DIM, SCALAR_MAX_HEAD_DIM

MMA_MIN_CAPABILITY = (8, 0)  # mma.sync with bf16 and cvt.rn.bf16x2 need sm_80
MMA_TILES = (16, 32, 64, 128)
# the wgmma forward (st_fwd_wgmma.cu): sm_90a code runs on compute capability 9.0 only; its
# m64n64k16 products fix the head dim and both tiles at 64, one warpgroup (128 threads) a CTA
WGMMA_CAPABILITY = (9, 0)
WGMMA_HEAD_DIM = 64
WGMMA_TILE = 64  # keys a step, and query rows a warpgroup (128 threads)
WGMMA_BLOCK_M = (64, 128)
WARP_ROWS = (16, 32)  # query rows per warp in the forward kernel (1 or 2 mma row tiles)
WARP_32_MAX_HEAD_DIM = 64  # 32 rows per warp doubles Q / O / S registers: D <= 64 only
# WARP_M = 32 with BLOCK_N = 128 holds 32 (Q) + 64 (O) + 128 (S) fragment words per thread:
# ptxas (sm_90) spills 1.2 KB at D = 64, so the space stops 32-row warps at BLOCK_N = 64
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
    forward on the H200) and the local search would spend a start on it.
    Warps per CTA: BLOCK_M / WARP_M forward, BLOCK_M / 16 backward. The default comes first:
    the tuner's local search starts from the first candidate of each layout block (started
    from 16 x 16 tiles, the slowest, it picked 26.7 ms for causal N = 65536 on the H200, where
    128 x 64 tiles at 32 rows per warp run 18.5 ms). The wgmma forward
    (``{"kernel": "wgmma", "BLOCK_M": 128 or 64}``) is left out: on the H200 it ran 3-5% slower
    than the best mma.sync tiles on causal / fixed at N = 16384 and 65536 (kernels/cupy/NOTES.md),
    so it would only spend the tuner's evaluations; ask for it by config."""
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
