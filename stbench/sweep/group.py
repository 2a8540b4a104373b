"""One group of a sweep, (N, layout, dtype), row by row, and the first calls to compile ahead.

Per row (``tuning.measure``): unsupported backends and layouts that cannot exist at that N
become ``unsupported`` rows; the first call is ``prepare_ms``; the output (and for 'fwd+bwd' the
gradients) is checked against the dense reference on batch element 0 -- every query row up to
H N^2 = 8 x 16384^2 score entries, 256 seeded rows per head beyond (``tuning.check``; the row's
``check`` says which) -- before it is timed; peak memory is measured on CUDA. With ``tune`` each
(problem, backend) is tuned first (``tuning.autotune``; candidates in ``tune.jsonl``, picks in
``tune.json`` under the output folder) and the row measures the pick; with ``picks`` it
re-measures an earlier sweep's (block, config). Every exception is a row.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from stbench import backends, layouts, results
from stbench.sweep.config import TUNE_CACHE, WORK_DIR, Group, SweepConfig, pick_key
from stbench.tuning import autotune, check, local
from stbench.tuning.measure import (BenchSettings, classify_exception, error_text, make_row,
                                    measure)
from stbench.tuning.precompile import COMPILED_BACKENDS, Job, Precompiler


def run_group(cfg: SweepConfig, group: Group, out_dir: Path, *, device, tune: bool,
              deadline: float | None, on_begin=None, on_end=None, precompiler=None,
              picks: dict | None = None) -> bool:
    """Run a group's items in order, appending each row to results.jsonl; False if stopped by
    the deadline. Inputs and the dense reference are made once per mode, on first need.
    ``precompiler``: a ``tuning.precompile.Precompiler`` the tuner compiles each batch of
    candidates with, side by side, before timing them. ``picks`` (``load_picks``): rows found
    there run that (block, config), untuned."""
    out = out_dir / results.RESULTS_FILE
    device = torch.device(device)
    settings = BenchSettings(cfg.warmup_ms, cfg.rep_ms, cfg.flush_l2, min_reps=cfg.min_reps)
    max_n = dict(cfg.max_n)
    base = cfg.problem(group.n, group.layout, group.dtype, group.items[0][0])
    try:
        layout, layout_error = base.build_layout(), None
    except (layouts.LayoutError, ValueError) as exc:
        layout, layout_error = None, f"layout {base.layout.describe()} at N={group.n}: {exc}"
    state = {}  # mode -> (inputs, reference) or an error row's (status, message)
    fwd_picks = {}  # backend -> (block, config) tuned in 'fwd': 'fwd+bwd' tunes the backward
    for i, (mode, backend) in enumerate(group.items):
        if deadline is not None and time.time() > deadline:
            return False
        if on_begin:
            on_begin(i)
        prob = cfg.problem(group.n, group.layout, group.dtype, mode)
        if layout is None:
            row = make_row(prob, None, backend, "unsupported", block=prob.layout.block,
                           error=layout_error)
        elif backend in max_n and group.n > max_n[backend]:
            row = make_row(prob, layout, backend, "unsupported",
                           error=f"skipped: N={group.n} > max_n[{backend}]={max_n[backend]} "
                           "in this sweep's config")
        elif (why := backends.unavailable_reason(backend, device, prob.torch_dtype,
                                                 layout)) is not None:
            row = make_row(prob, layout, backend, "unsupported", error=why)
        else:
            if mode not in state:
                state.clear()
                _free()
                state[mode] = _prepare_mode(prob, layout, device)
            prepared = state[mode]
            if isinstance(prepared[0], str):  # inputs could not be made
                row = make_row(prob, layout, backend, prepared[0], error=prepared[1])
            else:
                inputs, ref, note = prepared
                row = _measure_backend(cfg, prob, layout, backend, inputs, ref, device,
                                       settings, tune, out_dir, fwd_picks, precompiler,
                                       (picks or {}).get(pick_key(prob, backend)))
                if ref is None and row.check == "skipped":
                    row = replace(row, check=f"skipped: {note}")
        row = replace(row, device=str(device))
        results.append_rows(out, [row])
        if on_end:
            on_end(i, row)
    state.clear()
    _free()
    return True


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prepare_mode(prob, layout, device):
    try:
        inputs = prob.inputs(device)
    except Exception as exc:  # noqa: BLE001 - an OOM making inputs is a data point
        return classify_exception(exc), f"inputs: {error_text(exc)}"
    q, k, v = inputs
    try:
        ref = check.Reference(q, k, v, layout, prob.head_dim ** -0.5, prob.mode, seed=prob.seed)
        return inputs, ref, ""
    except Exception as exc:  # noqa: BLE001 - no reference: rows unchecked, saying why
        return inputs, None, f"dense reference failed: {error_text(exc)[:300]}"


def _measure_backend(cfg, prob, layout, backend, inputs, ref, device, settings, tune, out_dir,
                     fwd_picks, precompiler=None, pick=None):
    """One row: the backend at its pick (``pick``), its tuned best (``tune``) or its default;
    a configuration whose first call hung in a precompile worker becomes a ``timeout`` row
    without running here."""
    config, lay, tuned, block = None, layout, False, None
    if pick is not None:
        block, config = pick
        try:
            lay = layout.reblock(block) if block else layout
        except (layouts.LayoutError, ValueError) as exc:
            return make_row(prob, layout, backend, "unsupported",
                            error=f"--picks: block {block}: {exc}")
    elif tune and _tuned(cfg, backend):
        try:
            res = autotune.tune(
                prob, [backend], device=device, strategy=cfg.tune_strategy,
                settings=BenchSettings(min(10, cfg.warmup_ms), cfg.tune_rep_ms, cfg.flush_l2,
                                       min_reps=cfg.min_reps),
                cache_path=out_dir / TUNE_CACHE, rows_path=out_dir / results.TUNE_FILE,
                seed=cfg.seed, layout=layout, inputs=inputs, reference=ref,
                max_evals=cfg.tune_max_evals, forward=fwd_picks, precompiler=precompiler,
            )
            if res.best is not None:
                config, tuned = res.best.config, True
                if prob.mode == "fwd":
                    fwd_picks[backend] = (res.best.block, res.best.config)
                block = res.best.block
                lay = layout.reblock(block)
        except Exception as exc:  # noqa: BLE001 - a failed tuning falls back to the default
            return make_row(prob, layout, backend, classify_exception(exc),
                            error=f"tune: {error_text(exc)}")
    hung = precompiler.hung_error(Job.of(prob, backend, block, config)) if precompiler else None
    if hung is not None:
        return make_row(prob, lay, backend, "timeout", config=config, tuned=tuned, error=hung)
    return measure(prob, lay, backend, config, inputs=inputs, reference=ref, device=device,
                   settings=settings, tuned=tuned)


# ----------------------------------------------------------------------------- compiling ahead
def _tuned(cfg: SweepConfig, backend: str) -> bool:
    return not cfg.tune_backends or backend in cfg.tune_backends


def precompile_jobs(cfg: SweepConfig, groups: list[Group], device, tune: bool,
                    picks: dict | None = None) -> list:
    """The first calls the sweep's rows will make that are known before it starts: each
    compiling backend's default config on each row it runs untuned, and for each tuned 'fwd'
    problem the starts of the local search (``tuning.local.start_indices``, the same seed),
    cut to ``tune_max_evals``. The rest (the search's later rounds, and 'fwd+bwd' tuning,
    which starts from the 'fwd' pick) is compiled in batches as the tuner reaches it. A row in
    ``picks`` compiles its pick."""
    jobs = []
    max_n = dict(cfg.max_n)
    for g in groups:
        try:
            layout = cfg.problem(g.n, g.layout, g.dtype, g.items[0][0]).build_layout()
        except (layouts.LayoutError, ValueError):
            continue  # no such layout at this N: the rows say so; nothing to compile
        for mode, backend in g.items:
            if backend not in COMPILED_BACKENDS or g.n > max_n.get(backend, g.n):
                continue
            prob = cfg.problem(g.n, g.layout, g.dtype, mode)
            if backends.unavailable_reason(backend, device, prob.torch_dtype) is not None:
                continue
            if picks and pick_key(prob, backend) in picks:
                block, config = picks[pick_key(prob, backend)]
                jobs.append(Job.of(prob, backend, block, config))
            elif not (tune and _tuned(cfg, backend)):
                jobs.append(Job.of(prob, backend))
            elif mode == "fwd" and cfg.tune_strategy == "local":
                cands, _, _ = autotune.candidate_space(prob, layout, backend)
                starts = local.start_indices(cands, seed=cfg.seed)[:cfg.tune_max_evals]
                jobs.extend(Job.of(prob, backend, cands[i].block, cands[i].config)
                            for i in starts)
    return jobs


def open_precompiler(cfg: SweepConfig, groups: list[Group], device, tune: bool, out_dir: Path,
                     describe=None, picks: dict | None = None):
    """A ``Precompiler`` with ``cfg.precompile_workers`` processes that has run
    ``precompile_jobs``, or None when ``precompile_workers`` is 0. Each batch's outcome is
    logged to ``OUT/.work/precompile.jsonl``."""
    if not cfg.precompile_workers:
        return None
    pre = Precompiler(cfg.precompile_workers, str(device),
                      log_path=out_dir / WORK_DIR / "precompile.jsonl")
    jobs = precompile_jobs(cfg, groups, device, tune, picks)
    if describe:
        describe(f"precompiling {len(jobs)} first calls on {cfg.precompile_workers} workers")
    pre.run(jobs, phase="sweep")
    return pre
