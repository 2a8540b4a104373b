"""Sharded sweeps (stbench/sweep/sharding.py): the cost model's balance, the merge of shard
folders, and a sweep over 2 CPU processes (torchrun, gloo) resuming after a rank died: the same
problems as one process, each once."""

import json
import shutil

import pytest

from stbench import backends, cli, distributed, manifest, results
from stbench.sweep import SweepConfig, plan_groups, run_sweep, sharding
from stbench.sweep.config import item_key

SMALL = dict(ns=[256], layouts=["causal", "local"], backends=["dense", "sdpa"],
             modes=["fwd", "fwd+bwd"])


def _keys(path):
    return [r.key() for r in results.read_rows(path)]


def test_balance_deals_largest_first_to_the_least_loaded_rank():
    costs = [5.0, 4.0, 3.0, 3.0, 3.0, 1.0]
    shares = sharding.balance(costs, 2)
    # 5 -> r0; 4 -> r1; 3 -> r1 (4 < 5); 3 -> r0 (5 < 7); 3 -> r1 (7 < 8); 1 -> r0 (8 < 10)
    assert shares == [[0, 3, 5], [1, 2, 4]]
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) <= 4 / 3 * sum(costs) / 2  # Graham's bound against a perfect split
    assert sharding.balance([], 3) == [[], [], []]
    assert sharding.balance([2.0], 3) == [[0], [], []]


def test_standard_preset_spreads_its_largest_rows_over_the_ranks(monkeypatch):
    """Every backend taken as available (a GPU machine): the N = 65536 rows go to both ranks,
    the estimated loads are within 2 % of each other, and every row lands on exactly one rank."""
    monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)
    cfg = SweepConfig.preset("standard")
    grid = {item_key(cfg, g, *it) for g in plan_groups(cfg) for it in g.items}
    for tune in (False, True):
        shares = sharding.plan_shares(cfg, set(), 2, "cuda", tune)
        (a, sa), (b, sb) = shares
        assert not a & b and a | b == grid
        assert abs(sa - sb) <= 0.02 * max(sa, sb)
        for keys in (a, b):
            assert sum("|N=65536|" in k for k in keys) >= 10
    half_done = set(sorted(grid)[::2])
    shares = sharding.plan_shares(cfg, half_done, 2, "cuda", True)
    assert set().union(*(k for k, _ in shares)) == grid - half_done  # only what is missing


def test_row_cost_grows_with_the_work_and_skips_what_cannot_run(monkeypatch):
    cfg = SweepConfig.preset("standard").with_overrides(warmup_ms=1, rep_ms=1)  # work shows

    def cost(n, layout="causal", backend="dense", tune=False, built=True):
        prob = cfg.problem(n, layout, "bfloat16", "fwd+bwd")
        return sharding.row_cost(cfg, prob, prob.build_layout() if built else None, backend,
                                 "cpu", tune)

    assert cost(65536) == sharding.SKIPPED_ROW_S  # dense is capped at max_n = 16384
    assert cost(16384, built=False) == sharding.SKIPPED_ROW_S  # no such layout at that N
    assert cost(16384) > cost(4096) > sharding.ROW_FIXED_S  # B N^2 at B N fixed: grows with N
    assert cost(16384, "local", "sdpa") == sharding.SKIPPED_ROW_S  # sdpa: causal or full only
    assert cost(16384, "local") == cost(16384)  # the dense reference computes every pair
    monkeypatch.setattr(backends, "unavailable_reason", lambda *a, **k: None)  # a GPU machine
    assert cost(65536, "local", "triton") < cost(65536, "causal", "triton")  # allowed pairs
    assert cost(65536, "local", "triton", tune=True) > cost(65536, "local", "triton")


def test_merge_brings_shard_rows_in_once_and_removes_the_shards(tmp_path):
    cfg = SweepConfig.preset("quick").with_overrides(**SMALL)
    ref = tmp_path / "ref"
    run_sweep(cfg, ref, progress=False)
    rows = (ref / "results.jsonl").read_text().splitlines()
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("\n".join(rows[:2]) + "\n")
    for rank, part in ((0, rows[1:5]), (3, rows[4:])):  # overlaps: rows 1 and 4 twice
        d = sharding.shard_dir(out, rank)
        d.mkdir(parents=True)
        (d / "results.jsonl").write_text("\n".join(part) + "\n" + part[0][:40])  # a cut line
    candidate = {**json.loads(rows[0]), "kind": "tune", "config": {"BLOCK_M": 64}}
    twice = [dict(candidate, timestamp=t) for t in ("2026-01-01T00:00:00+00:00",
                                                    "2026-01-01T00:00:09+00:00")]
    (sharding.shard_dir(out, 3) / "tune.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in twice))  # the tuner measured it twice
    with pytest.warns(UserWarning, match="partial last line"):
        added = sharding.merge_shards(cfg, out, distributed.Ranks())
    assert added == len(rows) - 2
    assert sorted(_keys(out / "results.jsonl")) == sorted(_keys(ref / "results.jsonl"))
    assert len(results.read_rows(out / "tune.jsonl")) == 2  # every measurement is kept
    assert not (out / "shards").exists()
    assert sharding.merge_shards(cfg, out, distributed.Ranks()) == 0  # nothing left to merge


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
def test_sharded_sweep_resumes_after_a_rank_died(tmp_path, capsys):
    """A rank that dies leaves its shard file: the rows it finished and a cut-off line. A new
    2-process job (torchrun through --devices, gloo on the CPU) with --resume keeps those rows,
    re-runs the missing ones, and ends with the problems of a single-process run, each once."""
    cfg = SweepConfig.preset("quick").with_overrides(**SMALL)
    single = tmp_path / "single"
    run_sweep(cfg, single, progress=False)
    want = _keys(single / "results.jsonl")
    assert len(want) == 8

    out = tmp_path / "sharded"
    dead = sharding.shard_dir(out, 1)
    dead.mkdir(parents=True)
    left = (single / "results.jsonl").read_text().splitlines()[:3]
    (dead / "results.jsonl").write_text("\n".join(left) + "\n" + left[0][:50])
    argv = ["sweep", "--preset", "quick", "--out", str(out), "--ns", "256", "--layouts",
            "causal,local", "--backends", "dense,sdpa", "--no-progress", "--device", "cpu"]
    capsys.readouterr()
    assert cli.main(argv) == 2  # rows are there: not without --resume
    assert "--resume" in capsys.readouterr().err

    assert cli.main(argv + ["--devices", "2", "--resume"]) == 0
    rows = results.read_rows(out / "results.jsonl")
    assert sorted(r.key() for r in rows) == sorted(want)  # same problems, none twice
    kept = {json.loads(line)["timestamp"] for line in left}
    assert sum(r.timestamp in kept for r in rows) >= 3  # the dead rank's rows were not re-run
    assert all(r.device == "cpu" and r.host.startswith("host-") for r in rows)
    assert not (out / "shards").exists()
    m = manifest.read(out)
    assert m.world_size == 2 and m.rows == 8
    assert m.command.startswith("torchrun --nnodes=1 --nproc-per-node=2 -m stbench sweep")
    shutil.rmtree(single)
