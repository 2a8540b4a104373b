"""A sweep sharded over the processes of a torchrun job, one GPU each.

    torchrun --nproc-per-node K [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] \\
        -m stbench sweep --preset standard --out DIR --isolate --tune
    stbench sweep --preset standard --out DIR --isolate --tune --devices all   (starts torchrun)

``run_sharded`` on every rank (``stbench.distributed``: rank r runs on ``cuda:LOCAL_RANK``; the
ranks talk through gloo, a few Python objects between long stretches of measuring):

1. rank 0 refuses a folder that has rows unless ``resume`` (one message on every rank);
2. ``merge_shards``: rows that a previous run's ranks left in their shard folders are brought
   into ``DIR/results.jsonl`` (a rank that died loses nothing it had written);
3. rank 0 plans: the rows not yet in ``DIR/results.jsonl`` are cut into units, the modes of one
   (N, layout, dtype, backend) -- one unit, so that a 'fwd+bwd' row is tuned from its 'fwd'
   pick as in a single process -- each costed by ``row_cost`` (on rank 0's device: the ranks
   are taken to have the same GPU model and packages), and dealt largest first to the rank
   with the least work so far (``balance``); the plan is broadcast;
4. each rank runs its share with ``runner.run_sweep(only=...)`` into its own shard folder
   ``DIR/shards/rank-R/`` (results.jsonl, tune.jsonl, tune.json, .work/), the runner's resume,
   isolation, precompiling and time budget unchanged; its rows carry its device and host;
5. ``merge_shards`` again: DIR/results.jsonl then holds the same problems as a single-process
   run of the same config (each once), DIR/tune.jsonl the tuning candidates, DIR/tune.json the
   picks (keyed by GPU model, ``tuning.cache``), and the shard folders are gone.

Durability decides how rows travel: each row is appended and flushed to its rank's shard file
the moment it is measured, so a rank that dies loses at most the row it was on; the rows reach
rank 0 through torch.distributed's object collectives (``gather``), which needs no filesystem
shared between hosts: on each host the process with LOCAL_RANK 0 sends the rows of every shard
folder it sees, rank 0 appends those not yet in DIR/results.jsonl (one row per problem, the
latest if a problem was measured twice) and flushes them to disk before any shard is deleted.
Rows gathered only in memory at the end would die with their rank; shard files merged only by
reading them would need one filesystem for all hosts. ``--resume`` after a failure (torchrun
stops every rank when one dies) merges what the ranks wrote, then re-plans only the missing
rows over the ranks of the new job, whatever their number.

Compiling: a rank's precompile workers (``precompile_workers``) share the host's CPU cores with
the other ranks of the host, so each rank gets ``precompile_workers // LOCAL_WORLD_SIZE`` of
them (at least one); its isolation workers and precompile workers run on the rank's GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stbench import backends, distributed, layouts, results, timing
from stbench.sweep.config import (TUNE_CACHE, SweepConfig, SweepError, item_key, plan_groups,
                                  use_interpreter_if_no_gpu)
from stbench.sweep.runner import lock_output, measured_keys, run_sweep
from stbench.tuning import cache
from stbench.tuning.precompile import COMPILED_BACKENDS

SHARDS_DIR = "shards"  # DIR/shards/rank-R/: rank R's rows until they are merged
WAIT_FOR_RANKS_S = 24 * 3600  # a rank may finish its share hours before the last one does;
# when a rank dies torchrun stops the others, so no collective waits on a dead rank this long
# The cost model (seconds per row). The rates are what our kernels reach on large problems on
# an H200, about half of the bf16 dense peak and 60 % of HBM bandwidth. ROW_FIXED_S (first call
# from the compile cache, check, bookkeeping) and TUNE_CANDIDATE_S were chosen so that the model
# gives the tuned standard preset about its measured 8.6 min on one H200 (reports/standard);
# only the ratio of work to the fixed parts matters for the balance.
ROW_FIXED_S = 0.4
SKIPPED_ROW_S = 0.01  # an 'unsupported' row (no such layout, beyond max_n, backend absent)
COST_FLOP_RATE = 400e12  # FLOP/s
COST_BYTE_RATE = 2.9e12  # bytes/s of q, k, v, o (and dO, dQ, dK, dV) traffic
TIMED_CALLS = 8  # first call, check, min_reps of the timer, the memory call: calls of a row
TUNE_CANDIDATE_S = 0.1  # a tuning candidate's first call (precompiled) and check
DEFAULT_TUNE_EVALS = 20  # candidates a tuned row measures when tune_max_evals is not set


@dataclass(frozen=True)
class Unit:
    """Rows of one (N, layout, dtype, backend) still to run (``keys``: their item keys, one
    per mode) and the cost model's seconds for them."""

    n: int
    layout: str
    dtype: str
    backend: str
    keys: tuple[str, ...]
    cost_s: float


def shard_dir(out_dir, rank: int) -> Path:
    return Path(out_dir) / SHARDS_DIR / f"rank-{rank}"


def has_shards(out_dir) -> bool:
    """True when ``out_dir`` holds shard folders not yet merged."""
    return any((Path(out_dir) / SHARDS_DIR).glob("rank-*"))


# ----------------------------------------------------------------------------- cost model
def row_cost(cfg: SweepConfig, prob, layout, backend: str, device, tune: bool) -> float:
    """Estimated seconds of one row: a fixed part, then the timer's budget or, for long calls,
    ``TIMED_CALLS`` calls of ``allowed-pair FLOPs / COST_FLOP_RATE + bytes / COST_BYTE_RATE``
    (the dense reference computes every causal pair), and for a tuned row its candidates."""
    if layout is None or prob.n_ctx > dict(cfg.max_n).get(backend, prob.n_ctx) or \
            backends.unavailable_reason(backend, device, prob.torch_dtype, layout) is not None:
        return SKIPPED_ROW_S
    fwd_bwd = prob.mode == "fwd+bwd"
    pairs = layout.heads * prob.n_ctx * (prob.n_ctx + 1) // 2 if backends.info(
        backend).reference else layout.allowed_pairs
    flops = (timing.FLOPS_PER_PAIR_PER_DIM * prob.batch * prob.head_dim * pairs
             * (timing.FWD_BWD_FACTOR if fwd_bwd else 1.0))
    tensor = prob.batch * prob.heads * prob.n_ctx * prob.head_dim * prob.torch_dtype.itemsize
    call_s = flops / COST_FLOP_RATE + (8 if fwd_bwd else 4) * tensor / COST_BYTE_RATE
    seconds = ROW_FIXED_S + max((cfg.warmup_ms + cfg.rep_ms) / 1e3, TIMED_CALLS * call_s)
    if tune and backend in COMPILED_BACKENDS and (not cfg.tune_backends
                                                  or backend in cfg.tune_backends):
        evals = cfg.tune_max_evals or DEFAULT_TUNE_EVALS
        seconds += evals * (TUNE_CANDIDATE_S + max(cfg.tune_rep_ms / 1e3,
                                                   cfg.min_reps * call_s))
    return seconds


def plan_units(cfg: SweepConfig, done: set, device, tune: bool) -> list[Unit]:
    """The grid's rows not in ``done`` (item keys) as units, in the grid's order."""
    use_interpreter_if_no_gpu(cfg)  # before a backend is first imported to cost its rows
    units = []
    for g in plan_groups(cfg):
        try:
            layout = cfg.problem(g.n, g.layout, g.dtype, g.items[0][0]).build_layout()
        except (layouts.LayoutError, ValueError):
            layout = None  # the rows say why; they cost nothing
        for backend in cfg.backends:
            todo = [(m, b) for m, b in g.items
                    if b == backend and item_key(cfg, g, m, b) not in done]
            if not todo:
                continue
            cost = sum(row_cost(cfg, cfg.problem(g.n, g.layout, g.dtype, m), layout, b, device,
                                tune) for m, b in todo)
            units.append(Unit(g.n, g.layout, g.dtype, backend,
                              tuple(item_key(cfg, g, m, b) for m, b in todo), cost))
    return units


def balance(costs: list[float], world_size: int) -> list[list[int]]:
    """Longest processing time first: indices of ``costs`` dealt, largest first (ties: the
    earlier index), to the rank with the least total so far (ties: the lower rank). The
    largest rank total is at most 4/3 of the best possible split (Graham's bound)."""
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += costs[i]
    return shares


def plan_shares(cfg: SweepConfig, done: set, world_size: int, device,
                tune: bool) -> list[tuple[frozenset, float]]:
    """Per rank: (item keys of its rows, estimated seconds)."""
    units = plan_units(cfg, done, device, tune)
    return [(frozenset(k for i in idx for k in units[i].keys),
             sum(units[i].cost_s for i in idx)) for idx in balance(
                 [u.cost_s for u in units], world_size)]


# ----------------------------------------------------------------------------- merging
def _read_shard(folder: Path) -> dict:
    """A shard folder's rows, tuning candidates and tuning-cache entries, as JSON objects."""
    rows = folder / results.RESULTS_FILE
    tune_rows = folder / results.TUNE_FILE
    return {
        "rows": [r.to_dict() for r in results.read_rows(rows)] if rows.exists() else [],
        "tune": [r.to_dict() for r in results.read_rows(tune_rows)] if tune_rows.exists()
        else [],
        "cache": list(cache.load(folder / TUNE_CACHE)["entries"].values()),
    }


def _fsync(path: Path) -> None:
    if path.exists():
        with path.open("rb") as f:
            os.fsync(f.fileno())


def _append_new(path: Path, rows: list, order: dict) -> int:
    """Append the rows whose identity (``_identity``) is not in ``path`` yet: one per identity,
    the latest by timestamp, in ``order`` (item key -> position); flushed to disk. Returns how
    many."""
    have = {_identity(r) for r in results.read_rows(path)} if path.exists() else set()
    new: dict = {}
    for row in rows:
        k = _identity(row)
        if k not in have and (k not in new or row.timestamp > new[k].timestamp):
            new[k] = row
    fresh = sorted(new.values(), key=lambda r: (order.get(r.key(), len(order)), r.timestamp))
    if fresh:
        results.append_rows(path, fresh)
        _fsync(path)
    return len(fresh)


def _identity(row) -> str:
    """A sweep row's problem; a tuning candidate row itself (the tuner measures some
    candidates twice, and every measurement is kept)."""
    return row.key() if row.kind == "sweep" else json.dumps(row.to_dict(), sort_keys=True)


def merge_shards(cfg: SweepConfig, out_dir, ranks: distributed.Ranks) -> int:
    """Collective (every rank calls it, with nothing running): bring every shard folder's rows
    into ``out_dir`` (module doc) and delete the shards once they are on disk there. Returns the
    rows added to results.jsonl (on rank 0; 0 elsewhere)."""
    out = Path(out_dir)
    folders = sorted((out / SHARDS_DIR).glob("rank-*")) if ranks.local_rank == 0 else []
    payload = [_read_shard(f) for f in folders]
    payloads = distributed.gather(payload, ranks)
    added = 0
    if ranks.is_main:
        shards = [s for host in payloads for s in host]
        order = {item_key(cfg, g, *it): i for i, (g, it) in enumerate(
            (g, it) for g in plan_groups(cfg) for it in g.items)}
        where = str(out / SHARDS_DIR)
        added = _append_new(out / results.RESULTS_FILE, [
            results.row_from_dict(d, where) for s in shards for d in s["rows"]], order)
        _append_new(out / results.TUNE_FILE, [
            results.row_from_dict(d, where) for s in shards for d in s["tune"]], order)
        for entry in (e for s in shards for e in s["cache"]):
            cache.save_entry(entry, out / TUNE_CACHE)
    distributed.barrier(ranks)  # every row is on rank 0's disk before a shard goes
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if folders and not any((out / SHARDS_DIR).iterdir()):
        (out / SHARDS_DIR).rmdir()
    return added


# ----------------------------------------------------------------------------- the run
def _refusal(out: Path, resume: bool) -> str | None:
    target = out / results.RESULTS_FILE
    if not resume and ((target.exists() and target.stat().st_size) or has_shards(out)):
        return (f"{out} already has rows: pass --resume to continue that sweep, or choose "
                "another --out")
    return None


def rank_config(cfg: SweepConfig, ranks: distributed.Ranks) -> SweepConfig:
    """``cfg`` with the host's precompile workers divided among its ranks (module doc)."""
    if not cfg.precompile_workers or ranks.local_world_size == 1:
        return cfg
    return cfg.with_overrides(
        precompile_workers=max(1, cfg.precompile_workers // ranks.local_world_size))


def run_sharded(cfg: SweepConfig, out_dir, *, resume: bool = False, isolate: bool = False,
                tune: bool = False, max_minutes: float | None = None, device: str | None = None,
                progress: bool = True, picks_path=None, skip_bad_lines: bool = False,
                say=None) -> tuple[dict, distributed.Ranks]:
    """The sweep over this torchrun job's ranks (a single process outside torchrun, which then
    only merges what shards a sharded run left); see the module doc. Returns (counts as
    ``run_sweep``'s, summed over the ranks on rank 0, this rank's elsewhere; this rank's place).
    ``say(text)``: rank 0's plan, one line per rank. Rank 0 holds the output folder's lock
    (``runner.lock_output``) throughout; each rank's shard folder is locked by its own
    ``run_sweep``."""
    out = Path(out_dir)
    with (distributed.process_group(device, backend="gloo", timeout_s=WAIT_FOR_RANKS_S) as ranks,
          contextlib.ExitStack() as held):
        refusal = None
        if ranks.is_main:
            refusal = _refusal(out, resume)
            if refusal is None:
                try:
                    held.enter_context(lock_output(out))
                except SweepError as exc:
                    refusal = str(exc)
        refusal = distributed.broadcast(refusal, ranks)
        if refusal:
            raise SweepError(refusal)
        out.mkdir(parents=True, exist_ok=True)
        merge_shards(cfg, out, ranks)
        plan = None
        if ranks.is_main:
            done = measured_keys(out / results.RESULTS_FILE, skip_bad_lines)
            shares = plan_shares(cfg, done, ranks.world_size, ranks.device, tune)
            grid = sum(len(g.items) for g in plan_groups(cfg))
            plan = (shares, grid - sum(len(keys) for keys, _ in shares))
            for line in _share_lines(shares) if say else ():
                say(line)
        shares, skipped = distributed.broadcast(plan, ranks)
        mine = shares[ranks.rank][0]
        counts = {"stopped": False}
        if mine:
            counts = run_sweep(rank_config(cfg, ranks), shard_dir(out, ranks.rank),
                               resume=True, isolate=isolate, tune=tune, max_minutes=max_minutes,
                               device=ranks.device, progress=progress and ranks.is_main,
                               picks_path=picks_path, only=mine, skip_bad_lines=skip_bad_lines)
        counts.pop("skipped", None)
        every = distributed.gather(counts, ranks)
        merge_shards(cfg, out, ranks)
        if ranks.is_main:
            counts = {"skipped": skipped, "stopped": any(c["stopped"] for c in every)}
            for c in every:
                for k, v in c.items():
                    if k != "stopped":
                        counts[k] = counts.get(k, 0) + v
        return counts, ranks


def plan_text(cfg: SweepConfig, world_size: int, device, tune: bool) -> list[str]:
    """``--dry-run --devices K``: each rank's rows and estimated minutes."""
    return _share_lines(plan_shares(cfg, set(), world_size, device, tune))


def _share_lines(shares) -> list[str]:
    return [f"rank {r}: {len(keys)} rows, about {seconds / 60:.1f} min by the cost model"
            for r, (keys, seconds) in enumerate(shares)]
