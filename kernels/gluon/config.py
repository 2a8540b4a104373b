"""Tunables of the Gluon backend: one frozen forward config and the autotuner's space.

The forward's tiles are fixed by the design (128 query rows in two consumer warpgroups, 128-key
tiles = one layout block); what varies is the schedule: the depth of the K / V ring, whether
the two consumers take turns to issue their products (ping-pong), where P waits for its P V
product (registers or shared memory), and the launch order of the query tiles. The backward
runs the Triton backend's kernels at that backend's default config (kernels/triton/config.py).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields

STAGES = (2, 3)
ORDERS = ("asc", "desc")  # query tiles launched first to last, or last (longest causal rows) first


@dataclass(frozen=True)
class GluonConfig:
    stages: int = 2  # K / V tiles in flight (shared-memory ring slots)
    pingpong: bool = True  # the two consumer warpgroups take turns to issue their products
    # P_i as the A operand of P_i V_i: False: registers; True: a shared-memory slot (ptxas
    # keeps the register form's softmax behind the previous P V's wait: kernels/gluon/NOTES.md)
    p_smem: bool = True
    order: str = "asc"

    def __post_init__(self):
        if self.stages not in STAGES:
            raise ValueError(f"stages={self.stages} is not supported: use one of {STAGES}")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r} is not a launch order: use one of {ORDERS}")

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


def config_space(layout, head_dim: int, dtype) -> list[dict]:
    """Every schedule variant whose shared memory fits at ``head_dim``, the default first (the
    tuner's local search starts there)."""
    from .forward import SMEM_LIMIT, shared_bytes

    out = [GluonConfig().as_dict()]
    for stages, pingpong, p_smem, order in itertools.product(
            STAGES, (True, False), (True, False), ORDERS):
        cfg = GluonConfig(stages, pingpong, p_smem, order).as_dict()
        if cfg not in out and shared_bytes(stages, p_smem, head_dim) <= SMEM_LIMIT:
            out.append(cfg)
    return out
