"""The tuner against exhaustive search: its pick against the exhaustive best, tuning time,
lookup time.

Per problem: the dense reference and inputs are built once; the exhaustive search and the cheap
strategy (seeded with the best known configurations unless ``seeded=False``, capped at
``max_evals`` per backend if given) run over the same space (same backends, blocks, configs); the exhaustive best and the
pick are then re-timed side by side with the full timer budget (``FINAL_SETTINGS``), alternating
``RETIME_ROUNDS`` times (median of the medians), and ``ratio = pick_ms / best_ms`` (target
<= 1.03; exactly 1.0 when the pick is the exhaustive best itself). Tuning time is the
cheap strategy's wall time, everything included (compilation, checks). Lookup time is
``picks.cached_pick`` on that problem: cold (index rebuilt from the file) and warm (median of
``LOOKUPS`` calls). One JSON object per problem is appended to ``tune_eval.jsonl``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from stbench import environment, results
from stbench.tuning import autotune, cache, check, picks
from stbench.tuning.measure import measure

EVAL_SCHEMA = "stbench-tune-eval"
EVAL_VERSION = 1
EVAL_FILE = "tune_eval.jsonl"
LOOKUPS = 100
RETIME_ROUNDS = 3  # alternating re-timings of the exhaustive best and the pick when they differ


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _retime(problem, pick, variants_layout, inputs, device):
    row = measure(problem, variants_layout, pick.backend, pick.config, inputs=inputs,
                  reference=None, device=device, settings=autotune.FINAL_SETTINGS, kind="tune")
    return row.median_ms


def evaluate_problem(problem, backend_names, *, device, strategy="local", cache_path=None,
                     seed=0, max_evals=None, seeded=True) -> dict:
    device = torch.device(device)
    try:
        layout = problem.build_layout()
    except ValueError as exc:  # LayoutError: the pattern does not exist at this N
        return {"schema": EVAL_SCHEMA, "version": EVAL_VERSION, "problem": problem.label(),
                "env": environment.collect().to_dict(), "status": f"no layout: {exc}",
                "ratio": None}
    inputs = problem.inputs(device)
    q, k, v = inputs
    ref = check.Reference(q, k, v, layout, problem.head_dim ** -0.5, problem.mode,
                          seed=problem.seed)
    common = dict(device=device, layout=layout, inputs=inputs, reference=ref, seed=seed)
    ex = autotune.tune(problem, backend_names, strategy="exhaustive", save=False, seeds={},
                       **common)
    cheap = autotune.tune(problem, backend_names, strategy=strategy, save=True,
                          cache_path=cache_path, max_evals=max_evals,
                          seeds=None if seeded else {}, **common)
    rec = {
        "schema": EVAL_SCHEMA, "version": EVAL_VERSION, "env": environment.collect().to_dict(),
        "problem": problem.label(), "layout": problem.layout.name, "n_ctx": problem.n_ctx,
        "batch": problem.batch, "heads": problem.heads, "head_dim": problem.head_dim,
        "dtype": problem.dtype, "mode": problem.mode, "strategy": strategy,
        "seeded": seeded, "max_evals": max_evals,
        "backends": list(backend_names or []),
        "candidates": ex.candidates, "exhaustive_evaluated": ex.evaluated,
        "exhaustive_s": ex.seconds, "tune_evaluated": cheap.evaluated, "tune_s": cheap.seconds,
    }
    if ex.best is None or cheap.best is None:
        rec.update(status="no valid candidate", ratio=None)
        return rec
    blocks = {b: layout.reblock(b) for b in {ex.best.block, cheap.best.block}}
    same = (ex.best.backend, ex.best.block, ex.best.config) == (
        cheap.best.backend, cheap.best.block, cheap.best.config)
    best_runs, pick_runs = [], []
    for _ in range(1 if same else RETIME_ROUNDS):  # interleaved: drifts hit both alike
        best_runs.append(_retime(problem, ex.best, blocks[ex.best.block], inputs, device))
        if not same:
            pick_runs.append(_retime(problem, cheap.best, blocks[cheap.best.block], inputs,
                                     device))
    best_ms = _median(best_runs)
    pick_ms = best_ms if same else _median(pick_runs)
    # cached lookups of the layout at the picked block (what backend='auto' sees)
    lay = blocks[cheap.best.block]
    probe = q  # shape, dtype, device and requires_grad (the mode) of the problem
    cache._index.cache_clear()
    t = time.perf_counter()
    hit = picks.cached_pick(lay, probe, path=cache_path)
    cold_ms = (time.perf_counter() - t) * 1e3
    warm = []
    for _ in range(LOOKUPS):
        t = time.perf_counter()
        picks.cached_pick(lay, probe, path=cache_path)
        warm.append((time.perf_counter() - t) * 1e3)
    rec.update(
        status="ok", same_pick=same,
        best={"backend": ex.best.backend, "block": ex.best.block, "config": ex.best.config,
              "median_ms": best_ms},
        pick={"backend": cheap.best.backend, "block": cheap.best.block,
              "config": cheap.best.config, "median_ms": pick_ms},
        ratio=(pick_ms / best_ms) if (pick_ms and best_ms) else None,
        lookup_hit=hit is not None, lookup_cold_ms=cold_ms,
        lookup_warm_ms=statistics.median(warm),
    )
    return rec


def evaluate(problems, backend_names, *, device, out_dir, strategy="local", cache_path=None,
             seed=0, max_evals=None, seeded=True) -> list[dict]:
    """Evaluate every problem, appending each record to ``out_dir/tune_eval.jsonl``."""
    out = Path(out_dir) / EVAL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    recs = []
    for p in problems:
        rec = evaluate_problem(p, backend_names, device=device, strategy=strategy,
                               cache_path=cache_path, seed=seed, max_evals=max_evals,
                               seeded=seeded)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(cache.json_safe(rec), sort_keys=True) + "\n")
        recs.append(rec)
    return recs


def read(path) -> list[dict]:
    """Records of a tune_eval.jsonl (validated: schema and version)."""
    recs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise results.ResultsError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(r, dict) or r.get("schema") != EVAL_SCHEMA or r.get(
                "version") != EVAL_VERSION:
            raise results.ResultsError(f"{path}:{i}: not a {EVAL_SCHEMA} v{EVAL_VERSION} record")
        recs.append(r)
    return recs
