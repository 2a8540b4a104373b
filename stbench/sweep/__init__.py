"""Sweeps: N x layouts x backends (peers included) x mode x dtype -> results.jsonl.

``stbench sweep --preset quick --out DIR`` (presets: ``stbench/sweep/presets/*.toml``;
``--config FILE.toml`` for a custom grid with the same keys, see ``SweepConfig``). Backends are
compared on the same tensors side by side, each row checked against the dense reference before
it is timed; every failure is a row. ``--tune`` tunes each (problem, backend) first and
measures the pick; ``--picks RESULTS.jsonl`` re-measures an earlier sweep's (block, config)
instead (a regression check after a kernel change); ``--resume`` skips rows already written;
``--isolate`` runs the rows in worker subprocesses, so that a crash or a hang becomes a row;
under torchrun (or ``--devices``) the rows are sharded over the ranks, one GPU each.

Modules: ``config`` (the grid, its groups, picks), ``group`` (one group row by row, and the
first calls to compile ahead), ``runner`` (``run_sweep``), ``isolation`` (worker subprocesses),
``sharding`` (``run_sharded``: over the ranks of a torchrun job, merged into one results file).
"""

from stbench.sweep.config import (SweepConfig, SweepError, load_picks, pick_key,  # noqa: F401
                                  plan_groups)
from stbench.sweep.group import precompile_jobs, run_group  # noqa: F401
from stbench.sweep.runner import default_device, run_sweep  # noqa: F401

__all__ = ["SweepConfig", "SweepError", "default_device", "load_picks", "pick_key",
           "plan_groups", "precompile_jobs", "run_group", "run_sweep"]
