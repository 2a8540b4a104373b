"""The autotuner: per problem and backend, the best (layout block, backend config).

Space, per backend: its ``config_space(layout, head_dim, dtype)`` at every block granularity
16..128 to which the layout re-blocks exactly (``layout.reblock(b)``: the same token pattern,
other blocks; a block it cannot take is recorded as a ``constraint``). For 'fwd' problems, configs
differing only in backward keys (``bwd*`` / ``BWD*``) are one candidate.

Every candidate goes through ``tuning.measure``: availability, first call (``prepare_ms``), the
dense-reference gate (``tuning.check``), the timer, peak memory; each one's row (kind 'tune')
says why an invalid one was invalid. Strategies (``STRATEGIES``): ``exhaustive`` and ``local``
(seeded starts + one-knob descent, ``tuning/local.py``). Objectives: ``time`` (median ms),
``memory`` (peak bytes; on a CPU, where no peak is measured, time), ``time_under_budget``
(median ms among candidates whose peak fits ``memory_budget`` bytes). The best few are re-timed
with the full timer budget before the pick. Each backend's search starts from its best known
configurations for the problem (``tuning/seeds.py``: the cached and shipped picks, the other
mode's, the neighbouring N's), evaluated first, so that a budget-capped search reaches the known
best and explores around it before anything else.

The pick is saved in the persistent cache (``tuning/cache.py``) under the layout's hash and under
the hash of each re-blocked variant (with that block's best), per mode, so
``stbench.attention`` finds it for the layout at any block (``tuning.picks``: the overall best,
maybe at another block, else the best at the layout's own block).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace

import torch

from stbench import backends, layouts, results
from stbench.problems import Problem
from stbench.tuning import cache, check, exhaustive, local, seeds as known_starts
from stbench.tuning.measure import BenchSettings, Candidate, make_row, measure
from stbench.tuning.precompile import COMPILED_BACKENDS, Job

STRATEGIES = {"exhaustive": exhaustive.search, "local": local.search}
OBJECTIVES = ("time", "memory", "time_under_budget")
TUNE_SETTINGS = BenchSettings(warmup_ms=10, rep_ms=40)  # per candidate while searching
FINAL_SETTINGS = BenchSettings(warmup_ms=25, rep_ms=100, check=False)  # re-timing the best
REFINE_TOP = 3
BWD_PREFIXES = ("bwd", "BWD", "DQ_", "DKV_", "dq_", "dkv_")  # backward-only config keys


@dataclass(frozen=True)
class BackendPick:
    backend: str
    config: dict
    block: int
    median_ms: float | None
    peak_bytes: int | None


@dataclass(frozen=True)
class TuneResult:
    """The tuner's answer for one problem: ``best`` over our backends (peers and the reference
    only when nothing else runs), each backend's best, and what it cost."""

    problem: Problem
    objective: str
    strategy: str
    best: BackendPick | None
    per_backend: dict = field(default_factory=dict)  # name -> BackendPick
    per_block: dict = field(default_factory=dict)  # block -> BackendPick (best at that block)
    candidates: int = 0
    evaluated: int = 0
    seconds: float = 0.0
    rows: tuple = ()


def _fwd_keys(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith(BWD_PREFIXES)}


def _fwd_relevant(config: dict) -> str:
    return json.dumps(_fwd_keys(config), sort_keys=True)


def configs_for(configs, backend: str):
    """The configs to measure for ``backend``: ``configs`` itself where it is a list (or None:
    the backend's own space), else ``configs[backend]``, or ``configs[None]`` for a backend it
    does not name."""
    if configs is None or isinstance(configs, list):
        return configs
    return configs.get(backend, configs.get(None))


def candidate_space(problem: Problem, layout, backend: str, blocks=layouts.ALLOWED_BLOCKS,
                    configs=None):
    """(candidates, {block: layout}, notes): every (block, config) of one backend; ``configs``
    (a list of config dicts, or {backend or None: list}: ``configs_for``) replaces the
    backend's own space at every block."""
    configs = configs_for(configs, backend)
    module = backends.load(backend)
    variants, notes = {}, []
    for b in blocks:
        try:
            variants[b] = layout.reblock(b)
        except (layouts.LayoutError, ValueError) as exc:
            notes.append((b, str(exc)))
    cands = []
    for b, lay in variants.items():
        seen = set()
        space = (configs if configs is not None
                 else module.config_space(lay, problem.head_dim, problem.torch_dtype))
        for cfg in space:
            key = _fwd_relevant(cfg) if problem.mode == "fwd" else json.dumps(cfg, sort_keys=True)
            if key not in seen:
                seen.add(key)
                cands.append(Candidate(backend, dict(cfg), b))
    return cands, variants, notes


def with_forward(cands, forward):
    """'fwd+bwd' candidates narrowed to the forward pick ``forward = (block, config)``: at that
    block, every distinct backward setting of ``cands`` joined to the pick's forward keys (the
    forward kernel is then tuned once, in 'fwd', and the search spends its budget on the
    backward's tiles). ``cands`` unchanged when none is at that block."""
    block, config = forward
    fwd_keys = _fwd_keys(config)
    out, seen = [], set()
    for c in cands:
        if c.block != block:
            continue
        joined = {**c.config, **fwd_keys}
        key = json.dumps(joined, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(Candidate(c.backend, joined, block))
    return out or list(cands)


def score_of(row: results.ResultRow, objective: str, memory_budget: int | None) -> float:
    if row.status != "ok" or row.median_ms is None:
        return math.inf
    if objective == "time":
        return row.median_ms
    if objective == "memory":
        return float(row.peak_bytes) if row.peak_bytes is not None else row.median_ms
    if memory_budget is None:
        raise ValueError("objective='time_under_budget' needs memory_budget (bytes)")
    if row.peak_bytes is not None and row.peak_bytes > memory_budget:
        return math.inf
    return row.median_ms


def tune(problem: Problem, backend_names=None, *, device=None, strategy: str = "local",
         objective: str = "time", memory_budget: int | None = None,
         settings: BenchSettings | None = None, final: BenchSettings | None = None,
         cache_path=None, save: bool = True, rows_path=None, seed: int = 0, layout=None,
         inputs=None, reference=None, blocks=layouts.ALLOWED_BLOCKS,
         max_evals: int | None = None, forward: dict | None = None,
         precompiler=None, configs=None, seeds: dict | None = None) -> TuneResult:
    """Tune ``problem`` over ``backend_names`` (default: every registered backend that runs
    here). Writes candidate rows to ``rows_path`` (JSONL) if given, and the pick to the cache
    (``cache_path``, default the user's) unless ``save=False``. ``max_evals`` caps the
    candidates measured per backend (None: as many as the strategy wants). ``forward``:
    {backend: (block, config)} of 'fwd' picks; a 'fwd+bwd' problem then searches only the
    backward keys of that backend at that block (``with_forward``). ``precompiler``: a
    ``tuning.precompile.Precompiler`` that compiles each batch of candidates the strategy is
    about to evaluate side by side first; its workers rebuild the layout from ``problem``, so
    pass it only when ``layout`` is ``problem.build_layout()`` (or None). ``configs``: measure
    these configurations (dicts; {} is the default) of each backend instead of its space; a
    dict {backend: [configs]} gives a backend its own (None: every backend it does not name).
    ``seeds``: {backend: [(block, config)]} to start each search from (evaluated first);
    None: the best known ones (``tuning.seeds.known_configs``); {}: none."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: use one of {', '.join(OBJECTIVES)}")
    if objective == "time_under_budget" and not memory_budget:
        raise ValueError("objective='time_under_budget' needs memory_budget=BYTES (> 0)")
    t0 = time.perf_counter()
    settings = settings or TUNE_SETTINGS
    final = final or FINAL_SETTINGS
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layout = layout if layout is not None else problem.build_layout()
    if inputs is None:
        inputs = problem.inputs(device)
    if reference is None:
        q, k, v = inputs
        reference = check.Reference(q, k, v, layout, problem.head_dim ** -0.5, problem.mode,
                                    seed=problem.seed)
    names = list(backend_names) if backend_names else backends.names()
    rows, scored, total, evaluated = [], [], 0, 0
    layout_of_block = {}
    for name in names:
        why = backends.unavailable_reason(name, device, problem.torch_dtype, layout)
        if why is not None:
            rows.append(make_row(problem, layout, name, "unsupported", error=why, kind="tune"))
            continue
        cands, variants, notes = candidate_space(problem, layout, name, blocks, configs)
        if forward and name in forward and problem.mode == "fwd+bwd":
            cands = with_forward(cands, forward[name])
        layout_of_block.update(variants)
        for b, why in notes:
            rows.append(make_row(problem, None, name, "unsupported", block=b, kind="tune",
                                 error=f"constraint: block {b}: {why}"))
        total += len(cands)
        memo = {}

        def evaluate(c: Candidate, _memo=memo) -> float:
            key = (c.block, json.dumps(c.config, sort_keys=True))
            if key not in _memo:
                hung = precompiler.hung_error(_job(problem, c)) if precompiler else None
                if hung is not None:  # never run it here: it would hang this process too
                    row = make_row(problem, variants[c.block], c.backend, "timeout",
                                   config=c.config, kind="tune", error=hung)
                else:
                    row = measure(problem, variants[c.block], c.backend, c.config,
                                  inputs=inputs, reference=reference, device=device,
                                  settings=settings, kind="tune")
                s = score_of(row, objective, memory_budget)
                if row.status == "ok" and not math.isfinite(s):
                    row = replace(row, error=f"constraint: peak {row.peak_bytes} B exceeds the "
                                  f"memory budget {memory_budget} B")
                rows.append(row)
                _emit(rows_path, row)
                _memo[key] = (s, c, row)
            return _memo[key][0]

        prepare = (_compile_ahead(precompiler, problem, memo)
                   if precompiler is not None and name in COMPILED_BACKENDS else None)
        known = _known(problem, layout, name, cands, seeds, cache_path, configs)
        STRATEGIES[strategy](cands, evaluate, seed=seed, budget=max_evals, prepare=prepare,
                             known=known)
        evaluated += len(memo)
        scored.extend(v for v in memo.values() if math.isfinite(v[0]))
    scored.sort(key=lambda x: x[0])
    # re-time the best few with the full budget, side by side (search timings are short)
    final_rows = {}
    for s, c, row in scored[:REFINE_TOP]:
        r = measure(problem, layout_of_block[c.block], c.backend, c.config, inputs=inputs,
                    reference=None, device=device, settings=final, kind="tune")
        r = replace(r, check=row.check, err=row.err, tol=row.tol)
        final_rows[id(row)] = r
        rows.append(r)
        _emit(rows_path, r)

    def final_score(item):
        s, c, row = item
        r = final_rows.get(id(row))
        return score_of(r, objective, memory_budget) if r is not None else s

    def pick_of(item) -> BackendPick:
        s, c, row = item
        r = final_rows.get(id(row), row)
        return BackendPick(c.backend, c.config, c.block, r.median_ms, r.peak_bytes)

    ranked = sorted(scored, key=final_score)
    per_backend, per_block = {}, {}
    for item in ranked:
        per_backend.setdefault(item[1].backend, pick_of(item))
    ours = [it for it in ranked if not _is_peer_or_reference(it[1].backend)]
    pool = ours or ranked
    for item in pool:
        per_block.setdefault(item[1].block, pick_of(item))
    best = pick_of(pool[0]) if pool else None
    result = TuneResult(problem, objective, strategy, best, per_backend, per_block, total,
                        evaluated, time.perf_counter() - t0, tuple(rows))
    if save and best is not None:
        save_result(result, layout, layout_of_block, cache_path)
    return result


def _known(problem, layout, name, cands, seeds, cache_path, configs) -> list[int]:
    """Indices of ``cands`` to evaluate first: the given or best known configurations."""
    if configs is not None:
        return []
    known = (seeds.get(name, []) if seeds is not None
             else known_starts.known_configs(problem, layout, name, cache_path=cache_path))
    # a 'fwd' search holds one candidate per forward setting (backward keys at the default)
    return known_starts.indices(cands, known, _fwd_keys if problem.mode == "fwd" else dict)


def _job(problem: Problem, c: Candidate) -> Job:
    """The precompile job of candidate ``c``: its first call, made in a worker."""
    return Job.of(problem, c.backend, c.block, c.config)


def _compile_ahead(precompiler, problem: Problem, memo: dict):
    """The strategies' ``prepare``: compile a batch's candidates not measured yet (``memo``
    keys: (block, config JSON)) in the precompiler's workers."""
    def prepare(batch) -> None:
        precompiler.run([_job(problem, c) for c in batch
                         if (c.block, json.dumps(c.config, sort_keys=True)) not in memo])
    return prepare


def _is_peer_or_reference(name: str) -> bool:
    info = backends.info(name)
    return info.peer or info.reference


def _emit(path, row) -> None:
    if path is not None:
        results.append_rows(path, [row])


def _pick_dict(p: BackendPick) -> dict:
    return {"backend": p.backend, "config": p.config, "block": p.block,
            "median_ms": p.median_ms, "peak_bytes": p.peak_bytes}


def save_result(result: TuneResult, layout, layout_of_block: dict, cache_path=None) -> None:
    """Cache the pick under the layout's hash, and each block's best under its variant's hash."""
    prob, env = result.problem, cache.env_fields()
    per_backend = {n: _pick_dict(p) for n, p in result.per_backend.items()}
    for block, lay in {layout.block: layout, **layout_of_block}.items():
        same = result.per_block.get(block)
        if same is None:
            continue
        entry = {
            "env": env, "layout_hash": lay.content_hash, "n_ctx": prob.n_ctx,
            "heads": prob.heads, "layout_block": block, "batch": prob.batch,
            "head_dim": prob.head_dim, "dtype": prob.dtype, "mode": prob.mode,
            "objective": result.objective, "strategy": result.strategy,
            **_pick_dict(result.best), "same_block": _pick_dict(same),
            "per_backend": per_backend, "tuned_at": results.now(),
        }
        cache.save_entry(cache.json_safe(entry), cache_path)
