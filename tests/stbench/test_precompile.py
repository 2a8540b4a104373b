"""Compiling ahead of timing (stbench/tuning/precompile.py): the strategies hand each batch to
``prepare`` before evaluating it, the pool runs chains in worker processes and reports
failures, and a sweep with ``precompile_workers`` measures what one without it measures. On the
GPU: a first call after precompiling loads the kernel instead of compiling it."""

import json
import math
import os
import time

import pytest
import torch

from stbench import results
from stbench.problems import LayoutSpec, Problem
from stbench.sweep import SweepConfig, SweepError, plan_groups, precompile_jobs, run_sweep
from stbench.tuning import exhaustive, local
from stbench.tuning.measure import Candidate
from stbench.tuning.precompile import Job, Precompiler


def _grid_candidates():
    """Candidates on a 3 x 4 x 3 grid (block, tile, warps) with a unique best."""
    return [Candidate("x", {"tile": t, "warps": w}, b)
            for b in (16, 32, 64) for t in (16, 32, 64, 128) for w in (2, 4, 8)]


def _score(c):
    return abs(math.log2(c.block) - 5) + abs(math.log2(c.config["tile"]) - 6) + c.config["warps"]


@pytest.mark.parametrize("budget", [None, 5, 12])
def test_local_search_prepares_each_candidate_before_evaluating_it(budget):
    prepared, evaluated = [], []

    def prepare(batch):
        prepared.extend(id(c) for c in batch)

    def evaluate(c):
        assert id(c) in prepared, "evaluated a candidate that was not prepared first"
        evaluated.append(id(c))
        return _score(c)

    best = local.search(_grid_candidates(), evaluate, seed=3, budget=budget, prepare=prepare)
    assert best is not None
    assert len(prepared) == len(set(prepared))  # nothing prepared twice
    assert set(evaluated) == set(prepared)  # nothing prepared in vain, even at the budget's end
    if budget is not None:
        assert len(prepared) <= budget


def test_local_starts_are_what_the_search_evaluates_first():
    cands = _grid_candidates()
    order = []
    local.search(cands, lambda c: order.append(c) or _score(c), seed=7)
    starts = local.start_indices(cands, seed=7)
    assert [id(c) for c in order[:len(starts)]] == [id(cands[i]) for i in starts]
    assert [cands[i].block for i in starts[:3]] == [16, 32, 64]  # each block's first


def test_exhaustive_prepares_in_batches_within_the_budget(monkeypatch):
    monkeypatch.setattr(exhaustive, "PREPARE_BATCH", 5)
    batches, seen = [], []
    cands = _grid_candidates()

    def evaluate(c):
        assert any(c in b for b in batches)
        seen.append(c)
        return _score(c)

    exhaustive.search(cands, evaluate, budget=12, prepare=batches.append)
    assert [len(b) for b in batches] == [5, 5, 2] and seen == cands[:12]


def _problem(n, mode="fwd", spec=LayoutSpec("causal", "causal", 32)):
    return Problem(spec, n, 1, 2, 32, "float32", mode)


def test_precompiler_runs_one_chain_per_compile_key_until_a_job_succeeds(tmp_path):
    strided = LayoutSpec("strided", "strided", 16, (("stride", 16),))  # no such layout at N=128
    chain = [Job.of(_problem(128, spec=strided), "dense"), Job.of(_problem(256, spec=strided),
                                                                  "dense"),
             Job.of(_problem(512, spec=strided), "dense")]
    causal = [Job.of(_problem(64), "dense"), Job.of(_problem(128), "dense")]
    bwd = Job.of(_problem(64, "fwd+bwd"), "dense")
    bad = Job.of(_problem(64), "triton", None, {"NO_SUCH_KEY": 1})
    flex = [Job.of(_problem(64), "flex"), Job.of(_problem(128), "flex")]
    assert chain[0].compile_key() == chain[2].compile_key() != causal[0].compile_key()
    assert causal[0].compile_key() == causal[1].compile_key() != bwd.compile_key()
    assert flex[0].compile_key() != flex[1].compile_key()  # compiled per shape
    log = tmp_path / "pre.jsonl"
    with Precompiler(2, "cpu", log_path=log) as pre:
        out = pre.run(causal[::-1] + chain + [bwd, bad, bwd], phase="test")
        errors = {o.job: o.error for o in out}
        # each chain ran smallest N first, until one job succeeded
        assert set(errors) == {causal[0], chain[0], chain[1], bwd, bad}
        assert "strided needs" in errors[chain[0]] and errors[chain[1]] is None
        assert errors[causal[0]] is None and errors[bwd] is None
        assert "NO_SUCH_KEY" in errors[bad]  # the config error, named
        assert pre.run(causal + chain + [bwd]) == []  # done keys are not run again
        again = pre.run([bad])  # a failed one is
        assert len(again) == 1 and again[0].error
    (line, second) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["phase"] == "test" and line["jobs"] == 5 and line["chains"] == 4
    assert line["errors"] == 2 and second["jobs"] == 1
    assert any("triton causal N=64" in e for e in line["first_errors"])


def test_a_hung_first_call_is_reported_and_kept_from_the_timing_process(monkeypatch, tmp_path):
    """A chain with no end for stall_s: its key goes to ``hung``, the pool is killed, run
    returns; the tuner then scores that candidate as a timeout row without calling it."""
    from stbench.tuning import autotune
    from stbench.tuning.precompile import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "hang:sdpa")  # the spawned workers inherit it
    prob = _problem(64)
    with Precompiler(2, "cpu") as pre:
        warm = pre.run([Job.of(prob, "dense"), Job.of(_problem(64, "fwd+bwd"), "dense")])
        assert [o.error for o in warm] == [None, None]  # both workers are up now
        pre.stall_s = 6
        t0 = time.perf_counter()
        hang = Job.of(prob, "sdpa", 32, {})  # as the tuner makes it for its candidate
        out = pre.run([hang, Job.of(prob, "dense", 16)])  # and a new dense key
        assert time.perf_counter() - t0 < 60
        errors = {o.job.backend: o.error for o in out}
        assert errors["dense"] is None and errors["sdpa"].startswith("timeout")
        assert pre.hung == {hang.compile_key()} and pre._pool is None
        assert pre.hung_error(hang).startswith("its first call hung")
        assert pre.run([hang]) == []  # a hung key is not tried again
        calls = []
        monkeypatch.setattr(autotune, "measure", lambda *a, **k: calls.append(a))
        res = autotune.tune(prob, ["sdpa"], device="cpu", strategy="exhaustive",
                            precompiler=pre, save=False, blocks=(32,))
    assert not calls and res.best is None
    assert [r.status for r in res.rows] == ["timeout"]
    assert "hung in a precompile worker" in res.rows[0].error


def test_a_sweep_row_whose_first_call_hung_is_a_timeout_row():
    from stbench.sweep import group

    prob = _problem(64)
    pre = Precompiler(1, "cpu", stall_s=6)  # its pool never starts here
    pre.hung.add(Job.of(prob, "dense").compile_key())  # the default row's first call hung
    row = group._measure_backend(SweepConfig.preset("quick"), prob, prob.build_layout(), "dense",
                                 prob.inputs("cpu"), None, "cpu", None, False, None, {},
                                 precompiler=pre)
    assert row.status == "timeout" and "hung in a precompile worker" in row.error


def test_precompile_workers_is_validated():
    with pytest.raises(SweepError, match="precompile_workers=-1 must be an int >= 0"):
        SweepConfig.from_dict({"name": "x", "ns": [256], "layouts": ["causal"],
                               "backends": ["dense"], "precompile_workers": -1})
    with pytest.raises(ValueError, match="use at least 1"):
        Precompiler(0, "cpu")


TUNED = {"name": "pre", "ns": [128, 256], "layouts": ["causal"], "backends": ["triton", "dense"],
         "modes": ["fwd", "fwd+bwd"], "dtypes": ["float32"], "heads": 2, "head_dim": 32,
         "tokens": 256, "warmup_ms": 1, "rep_ms": 2, "min_reps": 1, "flush_l2": False,
         "block": 32, "triton_interpret": True, "tune_rep_ms": 2, "tune_max_evals": 3,
         "tune_backends": ["triton"]}


def test_precompile_jobs_are_the_local_starts_of_each_tuned_fwd_problem():
    cfg = SweepConfig.from_dict(dict(TUNED, backends=["triton", "dense", "flex"]))
    jobs = precompile_jobs(cfg, plan_groups(cfg), "cpu", tune=True)
    # triton fwd: the first 3 starts at each N; fwd+bwd (tuned from the fwd pick): none;
    # dense compiles nothing; flex cannot run on a CPU
    assert {(j.backend, j.problem.mode, j.problem.n_ctx) for j in jobs} == {
        ("triton", "fwd", 128), ("triton", "fwd", 256)}
    assert len(jobs) == 6
    untuned = precompile_jobs(cfg, plan_groups(cfg), "cpu", tune=False)
    assert {(j.problem.mode, j.config) for j in untuned} == {("fwd", "null"),
                                                            ("fwd+bwd", "null")}


@pytest.mark.slow
def test_a_precompiled_sweep_measures_what_a_plain_one_does(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the interpreter run of this grid is for the CPU")
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path / "user-cache"))
    plain = SweepConfig.from_dict(dict(TUNED, ns=[128]))
    pre = SweepConfig.from_dict(dict(TUNED, ns=[128], precompile_workers=2))
    run_sweep(plain, tmp_path / "plain", tune=True, progress=False)
    run_sweep(pre, tmp_path / "pre", tune=True, progress=False)
    a = results.read_rows(tmp_path / "plain" / "results.jsonl")
    b = results.read_rows(tmp_path / "pre" / "results.jsonl")
    assert [(r.backend, r.mode, r.status, r.tuned) for r in a] == \
        [(r.backend, r.mode, r.status, r.tuned) for r in b]
    assert all(r.status == "ok" for r in b)
    log = [json.loads(x) for x in
           (tmp_path / "pre" / ".work" / "precompile.jsonl").read_text().splitlines()]
    assert log[0]["phase"] == "sweep" and log[0]["jobs"] == 3 and log[0]["errors"] == 0
    assert any(x["phase"] == "tune" for x in log)  # the fwd+bwd search, compiled in batches
    assert not (tmp_path / "plain" / ".work" / "precompile.jsonl").exists()


@pytest.mark.gpu
def test_a_first_call_after_precompiling_loads_instead_of_compiling(tmp_path, monkeypatch):
    """In a fresh Triton cache, two configs never compiled before: the one a worker compiled
    first makes its first call here in a fraction of the other's (which compiles here)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    from stbench import backends
    from stbench.tuning.measure import closure

    prob = Problem(LayoutSpec("causal", "causal", 64), 1024, 2, 4, 64, "bfloat16", "fwd+bwd")
    pre_cfg = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    cold_cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    with Precompiler(1, "cuda") as pre:
        (outcome,) = pre.run([Job.of(prob, "triton", None, pre_cfg)])
    assert outcome.error is None
    assert any(os.scandir(tmp_path / "triton-cache"))
    q, k, v = prob.inputs("cuda")
    layout = prob.build_layout()

    def first_call(config):
        run = closure(backends.load("triton"), q, k, v, layout, 64 ** -0.5, config, "fwd+bwd",
                      torch.ones_like(q))
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    cold = first_call(cold_cfg)  # compiles here (and builds the plan, shared by both)
    warm = first_call(pre_cfg)
    assert warm < 0.3 * cold, (warm, cold)


def test_the_tune_command_hands_the_tuner_a_precompiler_and_closes_it():
    import argparse

    from stbench.commands import tune as tune_cmd

    seen = []

    class FakeAutotune:
        @staticmethod
        def tune(prob, names, **kw):
            seen.append(kw["precompiler"])
            return "result"

    args = argparse.Namespace(device="cpu", precompile_workers=2, backends=None,
                              strategy="local", objective="time", memory_budget=None,
                              cache=None, rows=None, max_evals=None, no_seeds=False)
    assert tune_cmd._tune_one(FakeAutotune, _problem(64), args) == "result"
    assert isinstance(seen[0], Precompiler) and seen[0].workers == 2
    assert seen[0]._pool is None  # closed (it never started: the fake tuner ran nothing)
    args.precompile_workers = 0
    tune_cmd._tune_one(FakeAutotune, _problem(64), args)
    assert seen[1] is None
    args.precompile_workers = -1
    with pytest.raises(ValueError, match="--precompile-workers -1"):
        tune_cmd._tune_one(FakeAutotune, _problem(64), args)
