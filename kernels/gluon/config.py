"""Tunables of the Gluon backend: one frozen forward config and the autotuner's space.

A CTA owns ``block_m`` query rows (128 or 256: two consumer warpgroups of half each) and walks
128-key tiles (one layout block each); at 256 rows two query blocks share every K / V tile
loaded (half the shared-memory traffic per score). Also tunable: the depth of the K / V ring,
whether the two consumers take turns to issue their products (ping-pong), where P waits for
its P V product (registers or shared memory). The backward
runs the Triton backend's kernels at that backend's default config (kernels/triton/config.py).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

BLOCK_MS = (128, 256)
# P in registers beside S and O fits 240 registers a thread at 64 rows a warpgroup (the AOT
# build at block_m 256 spills 392 bytes a thread)
P_REGS_MAX_BLOCK_M = 128
STAGES = (2, 3)


@dataclass(frozen=True)
class GluonConfig:
    block_m: int = 128  # query rows per CTA
    stages: int = 2  # K / V tiles in flight (shared-memory ring slots)
    pingpong: bool = True  # the two consumer warpgroups take turns to issue their products
    # P_i as the A operand of P_i V_i: False: registers; True: a shared-memory slot (ptxas
    # keeps the register form's softmax behind the previous P V's wait: kernels/gluon/NOTES.md)
    p_smem: bool = True

    def __post_init__(self):
        if self.block_m not in BLOCK_MS:
            raise ValueError(f"block_m={self.block_m} is not supported: use one of {BLOCK_MS}")
        if self.stages not in STAGES:
            raise ValueError(f"stages={self.stages} is not supported: use one of {STAGES}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "GluonConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d or {}) - names
        if unknown:
            raise ValueError(
                f"unknown gluon config keys {sorted(unknown)}: the keys are {sorted(names)}"
            )
        return cls(**(d or {}))


def fits(cfg: GluonConfig, n_ctx: int, head_dim: int) -> str | None:
    """None if ``cfg`` can run at this sequence length and head dim, else why not."""
    from .forward import SMEM_LIMIT, shared_bytes

    if n_ctx % cfg.block_m:
        return f"block_m={cfg.block_m} does not divide n_ctx={n_ctx}: use block_m=128"
    if cfg.block_m > P_REGS_MAX_BLOCK_M and not cfg.p_smem:
        return (f"block_m={cfg.block_m} with p_smem=False spills registers (P held in them "
                "beside S and O): use p_smem=True")
    need = shared_bytes(cfg.block_m, cfg.stages, cfg.p_smem, head_dim)
    if need > SMEM_LIMIT:
        return (f"block_m={cfg.block_m}, stages={cfg.stages}, p_smem={cfg.p_smem} need {need} "
                f"bytes of shared memory at head_dim={head_dim} (limit {SMEM_LIMIT}): use "
                "block_m=128, stages=2 or p_smem=False")
    return None


def default_config(layout, head_dim: int) -> GluonConfig:
    """The default: 256-row CTAs where they fit, else 128."""
    wide = GluonConfig(block_m=256)
    return wide if fits(wide, layout.n_ctx, head_dim) is None else GluonConfig()


def resolve_config(layout, head_dim: int, config: dict | None) -> GluonConfig:
    """The default config overridden by the (partial) ``config`` dict; ValueError where the
    result cannot run this problem."""
    cfg = GluonConfig.from_dict({**default_config(layout, head_dim).as_dict(), **(config or {})})
    why = fits(cfg, layout.n_ctx, head_dim)
    if why is not None:
        raise ValueError(f"gluon config {cfg.as_dict()}: {why}")
    return cfg


def config_space(layout, head_dim: int, dtype) -> list[dict]:
    """Every schedule variant that fits the problem, the default first (the tuner's local
    search starts there). ``layout`` None: every n_ctx (the space of a multiple of 256)."""
    n_ctx = layout.n_ctx if layout is not None else max(BLOCK_MS)
    default = GluonConfig(block_m=256) if layout is None else default_config(layout, head_dim)
    out = [default.as_dict()]
    for block_m, stages, pingpong, p_smem in itertools.product(
            BLOCK_MS, STAGES, (True, False), (True, False)):
        cfg = GluonConfig(block_m, stages, pingpong, p_smem)
        if cfg.as_dict() not in out and fits(cfg, n_ctx, head_dim) is None:
            out.append(cfg.as_dict())
    return out
