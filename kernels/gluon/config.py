"""Tunables of the Gluon backend: one frozen config and the autotuner's space.

A CTA owns 128 query rows (two consumer warpgroups of 64; 192 and three with ``rows=192``, at
D = 64, not yet measured and so not in the tuner's space) and walks 128-key tiles (one layout
block each). What is tunable in the forward is the schedule: the depth of the K / V ring,
whether the consumers take turns to issue their products (ping-pong), where P waits for its
P V product (registers or shared memory). The backward (``bwd_kernel``) is this backend's
warp-specialised kernel (``"gluon"``, backward.py; D = 64) or the Triton backend's kernels
(``"triton"``, kernels/triton/backward.py) with the backward fields of a Triton KernelConfig,
which this config carries under the same names (``BWD_KEYS``): tiles, warps, stages, atomic dQ.
``"auto"`` (the default) is "gluon" where it builds, else "triton". Measurements: NOTES.md.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace

STAGES = (2, 3)
ROWS = (128, 192)  # query rows a CTA: two consumer warpgroups, or three (union.py's lists)
ROWS_192_HEAD_DIMS = (64,)  # three consumers' accumulators fit the registers at D = 64 only
BWD_KERNELS = ("auto", "gluon", "triton")
# the Triton backward's fields (kernels/triton/config.py), passed to it as they are
BWD_KEYS = ("BWD_BLOCK_M", "BWD_BLOCK_N", "bwd_warps", "bwd_stages", "DQ_BLOCK_N",
            "DKV_BLOCK_M", "dq_atomic")


@dataclass(frozen=True)
class GluonConfig:
    stages: int = 2  # K / V tiles in flight (shared-memory ring slots)
    pingpong: bool = True  # the two consumer warpgroups take turns to issue their products
    # P_i as the A operand of P_i V_i: False: registers; True: a shared-memory slot (ptxas
    # keeps the register form's softmax behind the previous P V's wait: NOTES.md)
    p_smem: bool = True
    # query rows a CTA: 128 (one layout block, two consumers) or 192 (three consumers over one
    # and a half blocks, walking the union of the two blocks' tile lists: union.py)
    rows: int = 128
    # the backward (the Triton backend's kernels and fields; defaults: NOTES.md, "The backward")
    BWD_BLOCK_M: int = 128
    BWD_BLOCK_N: int = 128
    bwd_warps: int = 8
    bwd_stages: int = 2
    DQ_BLOCK_N: int = 0
    DKV_BLOCK_M: int = 0
    dq_atomic: bool = False
    # which backward runs: backward.py's warp-specialised kernel ("gluon", which ignores the
    # fields above), the Triton backend's kernels with them ("triton"), or "auto": "gluon" at
    # the head dims it builds for, else "triton" (resolve_config decides)
    bwd_kernel: str = "auto"

    def __post_init__(self):
        if self.stages not in STAGES:
            raise ValueError(f"stages={self.stages} is not supported: use one of {STAGES}")
        if self.rows not in ROWS:
            raise ValueError(f"rows={self.rows} is not supported: use one of {ROWS}")
        if self.bwd_kernel not in BWD_KERNELS:
            raise ValueError(f"bwd_kernel={self.bwd_kernel!r} is not a backward: use one of "
                             f"{BWD_KERNELS}")

    def as_dict(self) -> dict:
        return asdict(self)

    def backward_config(self) -> tuple:
        """The Triton backward's fields, as sorted (key, value) pairs (hashable)."""
        return tuple(sorted((k, getattr(self, k)) for k in BWD_KEYS))

    @classmethod
    def from_dict(cls, d: dict | None) -> "GluonConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d or {}) - names
        if unknown:
            raise ValueError(
                f"unknown gluon config keys {sorted(unknown)}: the keys are {sorted(names)}"
            )
        return cls(**(d or {}))


def fits(cfg: GluonConfig, head_dim: int) -> str | None:
    """None if ``cfg``'s shared memory fits at ``head_dim``, else why not."""
    from .forward import SMEM_LIMIT, shared_bytes

    from .backward import HEAD_DIMS as BWD_HEAD_DIMS

    if cfg.bwd_kernel == "gluon" and head_dim not in BWD_HEAD_DIMS:
        return (f"bwd_kernel='gluon' is built for head_dim {BWD_HEAD_DIMS} (its accumulators "
                f"spill at {head_dim}): use bwd_kernel='triton'")
    if cfg.rows == 192 and head_dim not in ROWS_192_HEAD_DIMS:
        return (f"rows=192 (three consumers) is built for head_dim {ROWS_192_HEAD_DIMS}: use "
                f"rows=128")
    need = shared_bytes(cfg.stages, cfg.p_smem, head_dim, rows=cfg.rows)
    if need > SMEM_LIMIT:
        return (f"stages={cfg.stages}, p_smem={cfg.p_smem}, rows={cfg.rows} need {need} bytes "
                f"of shared memory at head_dim={head_dim} (limit {SMEM_LIMIT}): use stages=2 "
                f"or p_smem=False")
    return None


def resolve_config(head_dim: int, config: dict | None) -> GluonConfig:
    """The default config overridden by the (partial) ``config`` dict, with ``bwd_kernel="auto"``
    made concrete for ``head_dim``; ValueError where the result does not fit."""
    from .backward import HEAD_DIMS as BWD_HEAD_DIMS

    cfg = GluonConfig.from_dict(config)
    if cfg.bwd_kernel == "auto":
        cfg = replace(cfg, bwd_kernel="gluon" if head_dim in BWD_HEAD_DIMS else "triton")
    why = fits(cfg, head_dim)
    if why is not None:
        raise ValueError(f"gluon config {cfg.as_dict()}: {why}")
    return cfg


# backward variants the tuner tries beside the default: this backend's kernel, the Triton
# backend's at its 128 x 128 default fields, the Triton default's square 64 tiles, a 128 x 64
# pair, its asymmetric tutorial tiles, dQ by atomic adds (kernels/triton/config.py's space
# holds the same shapes)
BWD_VARIANTS = (
    {"bwd_kernel": "gluon"},
    {"bwd_kernel": "triton"},
    {"bwd_kernel": "triton", "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 64, "bwd_warps": 4},
    {"bwd_kernel": "triton", "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 128, "bwd_warps": 8},
    {"bwd_kernel": "triton", "BWD_BLOCK_M": 128, "BWD_BLOCK_N": 64, "bwd_warps": 8},
    {"bwd_kernel": "triton", "DQ_BLOCK_N": 32, "DKV_BLOCK_M": 32, "bwd_warps": 4},
    {"bwd_kernel": "triton", "dq_atomic": True},
)


def forward_variants(head_dim: int) -> list[GluonConfig]:
    """The default first, then every ring depth x ping-pong x P placement that fits (each with
    the default backward)."""
    out = [GluonConfig()]
    for stages, pingpong, p_smem in itertools.product(STAGES, (True, False), (True, False)):
        cfg = GluonConfig(stages, pingpong, p_smem)
        if cfg not in out and fits(cfg, head_dim) is None:
            out.append(cfg)
    return out


def config_space(layout, head_dim: int, dtype) -> list[dict]:
    """The forward variants (the default first: the tuner's local search starts there), then
    the backward variants (``BWD_VARIANTS``, the default forward) that fit ``head_dim`` and, for
    the Triton backward, whose tiles the Triton backend accepts for ``layout``; every config
    resolved for ``head_dim`` (no "auto"), without repeats."""
    from ..triton.config import KernelConfig, _ok

    out = [resolve_config(head_dim, cfg.as_dict()).as_dict()
           for cfg in forward_variants(head_dim)]
    for variant in BWD_VARIANTS:
        cfg = replace(GluonConfig(), **variant)
        if fits(cfg, head_dim) is not None:
            continue
        bwd = KernelConfig(**dict(cfg.backward_config()))
        if cfg.as_dict() not in out and (cfg.bwd_kernel == "gluon"
                                         or _ok(bwd, layout.n_ctx, head_dim, dtype)):
            out.append(cfg.as_dict())
    return out
