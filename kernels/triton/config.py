"""Tunables of the Triton backend: one frozen config, its defaults and the pruned space.

Forward tiles are BLOCK_M (queries) x BLOCK_N (gathered keys). The backward's dQ kernel uses
BWD_BLOCK_M (queries) x DQ_BLOCK_N (gathered keys), its dK/dV kernel BWD_BLOCK_N (keys) x
DKV_BLOCK_M (gathered queries); DQ_BLOCK_N = 0 means BWD_BLOCK_N and DKV_BLOCK_M = 0 means
BWD_BLOCK_M (square tiles, the measured default). The Triton fused-attention tutorial's choice
is the asymmetric 128 x 32 / 128 x 32. Tiles are independent of the layout block: see tiles.py.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

import torch

HEAD_DIMS = (32, 64, 128)
TILE_SIDES = (16, 32, 64, 128)
FWD_LOADS = ("gather", "tma")
# register budget proxy: accumulator + score tile elements per warp beyond which a config spills
MAX_TILE_ELEMS_PER_WARP = 128 * 128 // 4 * 2


@dataclass(frozen=True)
class KernelConfig:
    BLOCK_M: int = 128
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    BWD_BLOCK_M: int = 64
    BWD_BLOCK_N: int = 64
    bwd_warps: int = 4
    bwd_stages: int = 2
    allow_tf32: bool = False  # fp32 inputs only: tf32 dots (about 1e-3 relative error)
    DQ_BLOCK_N: int = 0  # dQ's gathered key tile (0: BWD_BLOCK_N)
    DKV_BLOCK_M: int = 0  # dK/dV's gathered query tile (0: BWD_BLOCK_M)
    split_union: bool = False  # merged strided layouts: two exact parts merged by LSE (compose.py)
    # forward Q / K / V loads: "gather" (row by row through the index, any layout) or "tma" (one
    # Hopper TMA box per tile: 16-bit inputs, no token permutation, BLOCK_N <= min(BLOCK_M,
    # layout block), so that every key tile is consecutive rows)
    fwd_loads: str = "gather"
    # dK/dV accumulated as [D, key tile] (dV^T += dO^T P, dK^T += Q^T dS): the head dim is
    # the products' M side, so key tiles narrower than 64 still run as Hopper wgmma (which
    # needs 64 rows a warpgroup) rather than mma.sync. None: transposed exactly there
    # (16-bit, key tile < 64; ``dkv_transposed_for``), where it measured faster (H200)
    dkv_transposed: bool | None = None
    # dQ without its own kernel: the dK/dV kernel adds each tile's dS K into an fp32 dQ by
    # atomic adds (P recomputed once, not twice; dQ's summation order then varies run to run)
    dq_atomic: bool = False

    def __post_init__(self):
        if self.fwd_loads not in FWD_LOADS:
            raise ValueError(
                f"fwd_loads={self.fwd_loads!r} is not a forward load variant: use one of "
                f"{FWD_LOADS}"
            )

    def dq_tiles(self) -> tuple[int, int]:
        """(query tile, key tile) of the dQ kernel."""
        return self.BWD_BLOCK_M, self.DQ_BLOCK_N or self.BWD_BLOCK_N

    def dkv_tiles(self) -> tuple[int, int]:
        """(key tile, query tile) of the dK/dV kernel."""
        return self.BWD_BLOCK_N, self.DKV_BLOCK_M or self.BWD_BLOCK_M

    def dkv_transposed_for(self, dtype: torch.dtype) -> bool:
        """Whether the dK/dV kernel accumulates transposed for inputs of ``dtype``."""
        if self.dkv_transposed is not None:
            return self.dkv_transposed
        return dtype != torch.float32 and self.dkv_tiles()[0] < 64

    def in_prec(self, dtype: torch.dtype) -> str:
        # fp32 exact: three tf32 products (Triton 3.6 fails to lower "ieee" dots on sm_90)
        if dtype == torch.float32 and not self.allow_tf32:
            return "tf32x3"
        return "tf32"

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> "KernelConfig":
        """Build from a (partial) dict; unknown keys raise ValueError naming them."""
        if not d:
            return KernelConfig()
        names = {f.name for f in fields(KernelConfig)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(
                f"config has unknown keys {bad}: the triton backend takes {sorted(names)}"
            )
        return KernelConfig(**d)


def _largest_divisor_tile(n_ctx: int, want: int) -> int:
    t = want
    while t > 16 and n_ctx % t:
        t //= 2
    return t


# Below this block density the standard layouts are latency-bound (1-3 tiles per query tile):
# 64-row tiles with 4 warps and 3 stages measured best there, 128 x 64 with 8 warps and 3 stages
# on causal / fixed (H200, N = 65536, bf16: reports/triton/triton_vs_flex_n65536.jsonl at the
# git tag reports-archive).
SPARSE_BLOCK_DENSITY = 0.05


def default_config(layout, head_dim: int, dtype: torch.dtype) -> KernelConfig:
    """A sound untuned choice, from the measured mini-tune: 16-bit, D <= 64: 128 x 64 tiles,
    8 warps, 3 stages (64 x 64, 4 warps, 3 stages on layouts sparser than
    SPARSE_BLOCK_DENSITY); D = 128 or fp32: 64-row tiles, 2 stages (shared memory); tiles
    shrunk to divide N; the backward at 64 x 64 (32 x 32 for fp32 at D = 128). A merged
    strided layout is split (``split_union``, compose.py) and run with 64-row tiles. The
    dense-ish 16-bit D <= 64 forward loads by TMA where its tiles allow (no permutation, key
    tiles within a block): 1.4-2.9% faster than the gather on causal and fixed at N = 16384
    and 65536 (H200, kernels/triton/NOTES.md)."""
    wide = head_dim >= 128 or dtype == torch.float32
    split = _is_merged_strided(layout)  # exact split: 3-9x less work than any single layout
    sparse = split or layout.block_density < SPARSE_BLOCK_DENSITY
    bm = _largest_divisor_tile(layout.n_ctx, 64 if (wide or sparse) else 128)
    bn = 32 if (wide and head_dim >= 128 and dtype == torch.float32) else 64
    bwd = _largest_divisor_tile(layout.n_ctx, 64 if not (wide and head_dim >= 128) else 32)
    tma = not (wide or sparse) and tma_tiles_fit(layout, bm, bn)
    return KernelConfig(
        BLOCK_M=bm, BLOCK_N=bn, num_warps=8 if bm >= 128 else 4, num_stages=2 if wide else 3,
        BWD_BLOCK_M=bwd, BWD_BLOCK_N=bwd, bwd_warps=4, bwd_stages=2, split_union=split,
        fwd_loads="tma" if tma else "gather",
    )


def tma_tiles_fit(layout, block_m: int, block_n: int) -> bool:
    """The structural condition of fwd_loads="tma": no token permutation, and every key tile
    consecutive rows of one layout block (BLOCK_N <= min(layout block, BLOCK_M))."""
    return layout.perms is None and block_n <= min(layout.block, block_m)


def _ok(cfg: KernelConfig, n_ctx: int, head_dim: int, dtype: torch.dtype) -> bool:
    """The small filter: tiles divide N, fit registers, warps match tile size."""
    if n_ctx % cfg.BLOCK_M or n_ctx % cfg.BWD_BLOCK_M or n_ctx % cfg.BWD_BLOCK_N:
        return False
    esize = 4 if dtype == torch.float32 else 2
    work = cfg.BLOCK_M * (cfg.BLOCK_N + head_dim) * esize // 2
    if work > MAX_TILE_ELEMS_PER_WARP * cfg.num_warps:
        return False
    if cfg.BLOCK_M < 16 * cfg.num_warps // 4 or (cfg.BLOCK_M >= 128 and cfg.num_warps < 4):
        return False
    for major, minor in (cfg.dq_tiles(), cfg.dkv_tiles()):
        if minor < 16 or minor & (minor - 1):
            return False
        if major * (minor + 2 * head_dim) * esize // 2 > MAX_TILE_ELEMS_PER_WARP * cfg.bwd_warps:
            return False
    return True


# (fwd_loads, BLOCK_M, BLOCK_N, num_warps, num_stages) of the TMA forward, proposed at head
# dims <= 64 (where it was measured)
TMA_CANDIDATES = (("tma", 128, 64, 8, 3), ("tma", 64, 64, 4, 3), ("tma", 64, 32, 4, 3),
                  ("tma", 64, 32, 4, 2))  # the last: local's fastest kernel (H200)


def _is_merged_strided(layout) -> bool:
    from .compose import split_merged_strided

    return split_merged_strided(layout) is not None


def config_space(layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Configurations for the autotuner (dicts of KernelConfig fields), pruned by ``_ok``.
    The default configuration comes first."""
    default = default_config(layout, head_dim, dtype)
    out = [default.as_dict()]
    seen = {default}
    auto_t = KernelConfig(BWD_BLOCK_N=32).dkv_transposed_for(dtype)  # None's 32-key choice
    # forward tiles vary with the default backward, then backward tiles with the default forward
    fwd = (
        KernelConfig(**{**default.as_dict(), "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w,
                        "num_stages": s, "fwd_loads": "gather"})
        for bm, bn, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3))
    )
    bwd = (
        KernelConfig(**{**default.as_dict(), "BWD_BLOCK_M": bm, "BWD_BLOCK_N": bn,
                        "bwd_warps": w})
        for bm, bn, w in ((32, 64, 4), (64, 32, 4), (64, 64, 4), (64, 128, 8), (128, 64, 8),
                          (128, 128, 8))
    )
    # asymmetric backward tiles (Triton tutorial: dK/dV 128 keys x 32 queries, dQ 128 x 32);
    # and dK/dV 32 keys x 128 queries beside 64 x 32 dQ tiles: the fixed paper mask's 32-key
    # summary columns walk every later query, in a quarter of the steps (H200, N = 12288:
    # 3.300 ms against 3.582 for 64 x 32 throughout, kernels/triton/NOTES.md)
    asym = itertools.chain((
        KernelConfig(**{**default.as_dict(), "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 128,
                        "DQ_BLOCK_N": 32, "DKV_BLOCK_M": 32, "bwd_warps": w, "bwd_stages": s})
        for w, s in ((4, 2), (4, 3), (8, 2))
    ), (KernelConfig(**{**default.as_dict(), "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32,
                        "DKV_BLOCK_M": dkv_m, "bwd_warps": 4, "dkv_transposed": t})
        for dkv_m, t in ((128, None), (0, not auto_t), (128, not auto_t))))
    # (the 32-key dK/dV tiles run transposed in 16-bit by default, dkv_transposed=None: the
    # fixed paper mask's fwd+bwd at N = 12288 3.59 -> 2.78 ms on the H200; the other
    # orientation one step away)
    # the TMA forward loads, where the layout's key tiles are contiguous (forward.fwd_loads_error)
    tma = (
        KernelConfig(**{**default.as_dict(), "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w,
                        "num_stages": s, "fwd_loads": loads})
        for loads, bm, bn, w, s in TMA_CANDIDATES
    )
    tma = (c for c in tma if head_dim <= 64 and dtype != torch.float32
           and tma_tiles_fit(layout, c.BLOCK_M, c.BLOCK_N))
    # dQ by atomic adds, on the default and the largest backward tiles (one launch and one
    # recomputation of P fewer; on causal and fixed at N = 65536 0.6% and 2.4% slower: NOTES.md)
    atomic = (KernelConfig(**{**default.as_dict(), "dq_atomic": True, **extra})
              for extra in ({}, {"BWD_BLOCK_M": 128, "BWD_BLOCK_N": 128, "bwd_warps": 8}))
    split = ()
    if default.split_union:  # the unsplit form too (the tuner measures what the split buys)
        split = (KernelConfig(**{**default.as_dict(), "split_union": False}),)
    for cfg in itertools.chain(split, fwd, bwd, asym, atomic, tma):
        if cfg not in seen and _ok(cfg, layout.n_ctx, head_dim, dtype):
            seen.add(cfg)
            out.append(cfg.as_dict())
    return out
