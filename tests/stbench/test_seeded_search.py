"""The tuner reaches the known best within its budget when seeded with the best known
configurations (the shipped picks, the cache, neighbouring N): a synthetic cost model stands in
for the GPU (a fake ``measure``), over the Triton backend's real configuration space."""

import json

import pytest
import torch

from stbench import problems
from stbench.tuning import autotune, cache, local, picks, seeds, shipped
from stbench.tuning.measure import Candidate, make_row

ASYM = {"BWD_BLOCK_M": 128, "BWD_BLOCK_N": 128, "DQ_BLOCK_N": 32, "DKV_BLOCK_M": 32,
        "bwd_warps": 4}
OPT_BLOCK = 64


def _problem(n=4096, mode="fwd+bwd"):
    return problems.Problem(problems.layout_spec("causal"), n, 65536 // n, mode=mode)


def _distance(a: dict, b: dict) -> int:
    return sum(a.get(k) != b.get(k) for k in a.keys() | b.keys())


@pytest.fixture
def space():
    """The Triton candidates of the standard causal problem at N = 4096, fwd+bwd; the optimum
    (an asymmetric backward at block 64, three stages) and the known pick one knob from it (two
    stages). Both lie across multi-knob jumps from the default (the space holds no point in
    between), so an unseeded descent gets there only from a random start or a long way round."""
    pytest.importorskip("triton")
    prob = _problem()
    layout = prob.build_layout()
    cands, _, _ = autotune.candidate_space(prob, layout, "triton")
    asym = [c for c in cands if c.block == OPT_BLOCK
            and all(c.config.get(k) == v for k, v in ASYM.items())]
    opt = next(c for c in asym if c.config["bwd_stages"] == 3)
    known = next(c for c in asym if c.config["bwd_stages"] == 2)
    assert _distance(cands[0].config, opt.config) >= 4  # far from the default
    return prob, layout, cands, opt, known


def _cost(opt):
    """Synthetic milliseconds: 1 at the optimum, else 2 + coordinates away from it."""
    target = {"block": opt.block, **opt.config}
    return lambda block, config: (1.0 if (block, config) == (opt.block, opt.config)
                                  else 2.0 + _distance({"block": block, **config}, target))


def _unseeded_need(cands, cost, opt) -> int:
    """Evaluations the unseeded local search (no cap) makes up to and including the optimum;
    one more than all it makes where it never reaches it (stuck in a local minimum)."""
    calls = []
    local.search(cands, lambda c: calls.append(c) or cost(c.block, c.config))
    return calls.index(opt) + 1 if opt in calls else len(calls) + 1


def test_local_search_from_the_known_pick_reaches_the_optimum_in_budget(space):
    """A budget one short of what the unseeded search needs: seeded with the known pick, the
    search reaches the optimum (one knob away) within it; unseeded, it does not."""
    _, _, cands, opt, known = space
    cost = _cost(opt)
    budget = _unseeded_need(cands, cost, opt) - 1
    calls = []

    def evaluate(c):
        calls.append(c)
        return cost(c.block, c.config)

    seeded = local.search(cands, evaluate, budget=budget, known=[cands.index(known)])
    assert (seeded.block, seeded.config) == (opt.block, opt.config) and len(calls) <= budget
    unseeded = local.search(cands, evaluate, budget=budget)
    assert (unseeded.block, unseeded.config) != (opt.block, opt.config)


def _ship(tmp_path, prob, layout, block, config, mode=None, n=None):
    """A shipped picks file for GPU 'testgpu' holding one pick for ``prob``."""
    path = tmp_path / "shipped" / "testgpu.json"
    data = (json.loads(path.read_text()) if path.exists() else
            {"format": shipped.FORMAT, "version": shipped.VERSION, "gpu": "testgpu",
             "device_name": "Test GPU", "command": "test", "rule": "test", "sources": [],
             "problems": []})
    data["problems"].append({
        "layout": prob.layout.name, "layout_name": layout.name, "token_density": 0.5,
        "n_ctx": n or prob.n_ctx, "heads": prob.heads, "batch": prob.batch,
        "head_dim": prob.head_dim, "dtype": prob.dtype, "mode": mode or prob.mode,
        "hashes": {"128": layout.content_hash if n is None else f"other-{n}"},
        "picks": [{"backend": "triton", "block": block, "config": config, "median_ms": 1.0}]})
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(shipped.validate(data)))


@pytest.fixture
def testgpu(monkeypatch, tmp_path):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setattr(shipped, "current_gpu", lambda: "testgpu")
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path / "cache"))
    picks.clear()
    yield tmp_path
    picks.clear()


def test_tune_seeded_with_the_shipped_pick_finds_the_optimum_within_max_evals(
        space, testgpu, monkeypatch):
    """autotune.tune end to end with a fake measure: the shipped pick for the problem seeds the
    search, which reaches the optimum one knob away; unseeded, the same budget does not."""
    prob, layout, cands, opt, known = space
    cost = _cost(opt)
    measured = []

    def fake_measure(problem, lay, backend, config, *, kind="sweep", **_):
        measured.append((lay.block, config))
        return make_row(problem, lay, backend, "ok", config=dict(config), kind=kind,
                        median_ms=cost(lay.block, config))

    monkeypatch.setattr(autotune, "measure", fake_measure)
    _ship(testgpu, prob, layout, known.block, known.config)
    max_evals = _unseeded_need(cands, cost, opt) - 1
    tiny = tuple(torch.zeros(1, 1, 1, 1) for _ in range(3))
    common = dict(device="cpu", layout=layout, inputs=tiny, reference=object(), save=False,
                  max_evals=max_evals)
    res = autotune.tune(prob, ["triton"], **common)
    assert (res.best.block, res.best.config) == (opt.block, opt.config)
    assert res.evaluated <= max_evals
    assert measured[0] == (known.block, known.config)  # the known pick is measured first
    res = autotune.tune(prob, ["triton"], seeds={}, **common)
    assert (res.best.block, res.best.config) != (opt.block, opt.config)


def test_known_configs_order_and_mapping(testgpu):
    """This problem's cached and shipped picks first, then the other mode's, then the
    neighbouring N's; mapped onto candidates by the keys they name."""
    pytest.importorskip("triton")
    prob = _problem(mode="fwd")
    layout = prob.build_layout()
    a, b, c, d = ({"BLOCK_M": m, "num_warps": w} for m, w in ((64, 4), (128, 8), (64, 8),
                                                               (128, 4)))
    _ship(testgpu, prob, layout, 64, a)
    _ship(testgpu, prob, layout, 32, b, mode="fwd+bwd")
    _ship(testgpu, prob, layout, 128, c, n=2048)
    _ship(testgpu, prob, layout, 16, a, n=1024)  # not the nearest below
    cache.save_entry({"env": cache.env_fields(), "layout_hash": layout.content_hash,
                      "batch": prob.batch, "head_dim": prob.head_dim, "dtype": prob.dtype,
                      "mode": "fwd", "objective": "time", "backend": "triton", "config": d,
                      "block": 128, "per_backend": {"triton": {"config": d, "block": 128}}})
    got = seeds.known_configs(prob, layout, "triton")
    assert got == [(128, d), (64, a), (32, b), (128, c)]
    cands = [Candidate("triton", {"BLOCK_M": 64, "num_warps": 4, "bwd_warps": 8}, 64),
             Candidate("triton", {"BLOCK_M": 128, "num_warps": 8}, 128),
             Candidate("triton", {"BLOCK_M": 64, "num_warps": 8}, 128)]
    assert seeds.indices(cands, got) == [0, 2]  # d: no candidate; a; b: no block 32; c


def test_tune_command_checks_max_evals(capsys):
    from stbench.cli import main

    assert main(["tune", "--max-evals", "0"]) == 2
    assert "--max-evals 0" in capsys.readouterr().err
