"""benchmarks/triton_vs_flex.py's tuned candidates on a tiny problem (Triton's interpreter on
the CPU): the autotuner's candidates pass the dense-reference gate in both modes, and the
'fwd+bwd' tune searches the backward keys at the 'fwd' pick."""

import importlib.util
from pathlib import Path

import pytest
import torch

from stbench import problems

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_vs_flex.py"


@pytest.fixture(scope="module")
def script():
    pytest.importorskip("triton")
    spec = importlib.util.spec_from_file_location("triton_vs_flex", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.TUNE_MAX_EVALS = 2
    return mod


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_tuned_candidates_are_checked_and_measured(script, mode, device, monkeypatch):
    prob = problems.Problem(problems.layout_spec("local"), 256, 1, heads=2, head_dim=32,
                            mode=mode)
    layout = prob.build_layout()
    q = torch.randn(1, 2, 256, 32, device=device).to(torch.bfloat16)
    checker = script.Checker(layout, q, mode, 32**-0.5)
    seen = []
    tune = script.autotune.tune

    def spy(*args, **kwargs):
        res = tune(*args, **kwargs)
        seen.append(res)
        return res

    monkeypatch.setattr(script.autotune, "tune", spy)
    if mode == "fwd+bwd":
        script.FWD_PICKS[("local", 256)] = (64, dict(script.tb.default_config(
            layout.reblock(64), 32, torch.bfloat16).as_dict()))
    cands = script.candidates(prob, layout, checker)
    assert cands[0][0] is layout  # the default config at the layout's own block comes first
    statuses = [r.status for r in seen[0].rows]
    assert statuses and all(s == "ok" for s in statuses), statuses
    if mode == "fwd+bwd":  # the backward search stays at the forward pick's block
        assert {r.block for r in seen[0].rows} == {64}
