"""One backend on one standard problem, the workload Nsight Compute profiles (GPU only).

    python3 scripts/gpu_profile.py --backend triton --layout causal --n 65536 --mode fwd+bwd
    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \
        python3 scripts/gpu_profile.py ...          # (scripts/gpu_batch.sh profile does this)

The problem is TARGETS.md's standard one (bf16, H = 8, D = 64, B x N = 65536) at ``--n``; the
backend runs the config and layout block its row of ``--picks`` measured (default: the committed
tuned sweep, reports/standard/results.jsonl), or its default when there is no such row, or
``--config`` at the layout's own block. The call runs ``--warm`` times unprofiled
(compilation, planning), then once between
cudaProfilerStart and cudaProfilerStop: with ``--profile-from-start off`` ncu profiles exactly
the kernels of that one call (forward, or forward and backward). The output is checked against
the dense reference first (row-sampled beyond N = 16384), so a profile is of a correct run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stbench import autotune, backends
from stbench.sweep import SweepConfig, load_picks, pick_key
from stbench.tuning import check
from stbench.tuning.measure import closure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PICKS = ROOT / "reports" / "standard" / "results.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, choices=("triton", "cupy", "flex"))
    ap.add_argument("--layout", required=True)
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd")
    ap.add_argument("--picks", type=Path, default=DEFAULT_PICKS)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--config", type=json.loads, default=None,
                    help="a backend config (JSON) to profile instead of the pick, at the layout's "
                         "own block")
    args = ap.parse_args(argv)

    cfg = SweepConfig.preset("standard")
    prob = cfg.problem(args.n, args.layout, "bfloat16", args.mode)
    layout = prob.build_layout()
    picks = load_picks(args.picks) if args.picks.exists() else {}
    block, config = picks.get(pick_key(prob, args.backend), (None, None))
    if args.config is not None:
        block, config = None, args.config
    run_layout = autotune.reblock(layout, block) if block else layout
    q, k, v = prob.inputs("cuda")
    module = backends.load(args.backend)
    ref = check.Reference(q, k, v, layout, prob.head_dim ** -0.5, prob.mode, seed=prob.seed)
    verdict = ref.check_backend(
        lambda q_, k_, v_: module.attention(q_, k_, v_, run_layout, prob.head_dim ** -0.5,
                                            config), inputs=(q, k, v))
    print(json.dumps({"backend": args.backend, "layout": args.layout, "n": args.n,
                      "mode": args.mode, "block": run_layout.block, "config": config,
                      "check": verdict.check, "err": verdict.err, "tol": verdict.tol,
                      "ok": verdict.ok}), flush=True)
    if not verdict.ok:
        print(f"incorrect: {verdict.message()}", file=sys.stderr)
        return 1
    do = torch.randn_like(q) if prob.mode == "fwd+bwd" else None
    run = closure(module, q, k, v, run_layout, prob.head_dim ** -0.5, config, prob.mode, do)
    for _ in range(args.warm):
        run()
        for t in (q, k, v):
            t.grad = None
    torch.cuda.synchronize()
    cudart = torch.cuda.cudart()
    cudart.cudaProfilerStart()
    run()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
