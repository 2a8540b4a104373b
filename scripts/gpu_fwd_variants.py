"""One backend, one or more configurations, one or more standard problems: on each problem,
each configuration checked against the dense reference (computed once per problem), then
timed; one JSON line per (problem, configuration) on stdout (GPU only). Run a configuration
that may hang or fault in a process of its own, so it costs its own time cap, not the
comparison (scripts/gpu_batch.sh fwdvariants).

    python3 scripts/gpu_fwd_variants.py --backend triton --layout causal --n 65536 \
        --config '{"fwd_loads": "tma", "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}'
    python3 scripts/gpu_fwd_variants.py --backend triton --layout st_mix --n 65536 \
        --config null --config '{"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 2}'
    python3 scripts/gpu_fwd_variants.py --backend flex --layout causal,fixed --n 4096,65536 \
        --mode fwd,fwd+bwd                                          # 8 problems, one process
    python3 scripts/gpu_fwd_variants.py --plot reports/session4/fwd_variants/fwd_variants.jsonl \
        reports/session4/fwd_variants/fwd_variants.png              # any machine

Each row has the suite's timing (``median_ms``: L2 flushed, as the sweep) and where a call's
time goes (``host_ms`` / ``device_ms``, ``stbench.timing.host_device_split``); with
``--kernels``, each kernel's device time per call (``kernels_us``, ``timing.kernel_times``).
``--picks RESULTS.jsonl`` runs each problem at the block and config an earlier sweep measured
(its results file), to see where those rows' time went.

The problem is TARGETS.md's standard one (bf16, H = 8, D = 64, B x N = 65536) at ``--n``, at the
layout's own block (``--block`` re-blocks it); ``--config`` (repeatable; ``null``: the default)
overrides the backend's default. B = max(1, 65536 / N), so N above 65536 is TARGETS.md item 6's
problem (B = 1); ``--layout paper_fixed`` / ``paper_union`` (N = 12288 or 65536) is item 3's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from stbench import autotune, backends, environment, problems, timing
from stbench.sweep import SweepConfig, load_picks, pick_key
from stbench.tuning import check
from stbench.tuning.measure import closure


def _tags(cfg: dict, pairs) -> str:
    """" TAGvalue" for each (tag, key) of ``pairs`` that ``cfg`` sets."""
    return "".join(f" {tag}{cfg[key]}" for tag, key in pairs if key in cfg)


# the Triton config keys label() spells out; any other key it appends as key=value
_LABELLED = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "fwd_loads", "BWD_BLOCK_M",
             "BWD_BLOCK_N", "DQ_BLOCK_N", "DKV_BLOCK_M", "bwd_warps", "bwd_stages",
             "dkv_transposed"}


def label(row: dict) -> str:
    """A row's bar label: the backend and its configuration's distinguishing keys."""
    cfg = row["config"] or {}
    if row["backend"] == "cupy" and cfg.get("kernel") == "wgmma":  # 64 keys a step, always
        return f"cupy wgmma {cfg.get('BLOCK_M', 64)}x64"
    if row["backend"] == "cupy" and "BLOCK_M" in cfg:
        return f"cupy {cfg['BLOCK_M']}x{cfg['BLOCK_N']} {cfg.get('WARP_M', 16)} rows/warp"
    if row["backend"] != "triton":
        return row["backend"]
    tiles = ""
    if "BLOCK_M" in cfg:
        tiles = f" {cfg['BLOCK_M']}x{cfg['BLOCK_N']}" + _tags(
            cfg, (("w", "num_warps"), ("s", "num_stages")))
    bwd = f" bwd {cfg['BWD_BLOCK_M']}x{cfg['BWD_BLOCK_N']}" if "BWD_BLOCK_M" in cfg else ""
    bwd += _tags(cfg, (("dq_n", "DQ_BLOCK_N"), ("dkv_m", "DKV_BLOCK_M"), ("bw", "bwd_warps"),
                       ("bs", "bwd_stages")))
    bwd += " dkv^T" if cfg.get("dkv_transposed") else ""
    rest = "".join(f" {k}={cfg[k]}" for k in sorted(set(cfg) - _LABELLED))
    tag = f" [{row['tag']}]" if row.get("tag") else ""
    return f"triton {cfg.get('fwd_loads', 'default')}{tiles}{bwd}{rest}{tag}"


def plot(jsonl: str, png: str) -> None:
    """Median time per (layout, N, mode), one bar per configuration that passed its check."""
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in open(jsonl) if x.startswith("{")]
    rows = [r for r in rows if r["ok"]]
    key = lambda r: (r["layout"], r["n_ctx"], r.get("mode", "fwd"))  # noqa: E731
    problems = sorted({key(r) for r in rows})
    cols = min(2, len(problems))
    grid = (-(-len(problems) // cols), cols)
    fig, axes = plt.subplots(*grid, figsize=(10 * cols, 3.2 * grid[0]), squeeze=False)
    for ax in axes.flat[len(problems):]:
        ax.axis("off")
    for ax, (lay, n, mode) in zip(axes.flat, problems):
        mine = [r for r in rows if key(r) == (lay, n, mode)]
        ax.barh([label(r) for r in mine], [r["median_ms"] for r in mine],
                xerr=[[r["median_ms"] - r["p20_ms"] for r in mine],
                      [r["p80_ms"] - r["median_ms"] for r in mine]])
        ax.set_title(f"{lay}, N = {n}, {mode}")
        ax.set_xlabel("median ms (p20-p80)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _problem(ap, layout_name: str, n: int, mode: str):
    if layout_name.startswith("paper_"):  # TARGETS.md item 3's exact masks (B fixed per N)
        paper = {(p.layout.name, p.n_ctx): p for p in problems.paper_problems((mode,))}
        if (layout_name, n) not in paper:
            ap.error(f"--layout {layout_name} --n {n} is not a paper problem: use one of "
                     f"{sorted(paper)}")
        return paper[layout_name, n]
    return SweepConfig.preset("standard").problem(n, layout_name, "bfloat16", mode)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--plot"]:
        plot(*argv[1:3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, choices=("triton", "cupy", "flex"))
    ap.add_argument("--layout", required=True, help="a layout, or several: causal,fixed")
    ap.add_argument("--n", default="65536", help="N, or several: 4096,65536")
    ap.add_argument("--mode", default="fwd", help="fwd, fwd+bwd, or both: fwd,fwd+bwd")
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--config", type=json.loads, action="append", default=None)
    ap.add_argument("--kernels", action="store_true",
                    help="add each kernel's device time per call (us, torch.profiler) to the row")
    ap.add_argument("--tag", default=None,
                    help="a label carried in every row (e.g. which tree's kernels ran)")
    ap.add_argument("--picks", default=None, metavar="RESULTS.jsonl",
                    help="run each problem at the (block, config) an earlier sweep measured for "
                         "this backend (instead of --block / --config)")
    args = ap.parse_args(argv)
    if args.picks and (args.config or args.block):
        ap.error("--picks sets each problem's block and config: drop --block / --config")
    picks = load_picks(args.picks) if args.picks else {}
    configs = args.config or [None]
    modes = args.mode.split(",")
    for m in modes:
        if m not in ("fwd", "fwd+bwd"):
            ap.error(f"--mode {m!r}: use fwd, fwd+bwd or both (comma-separated)")
    module = backends.load(args.backend)
    failed = 0
    for layout_name in args.layout.split(","):
        for n in (int(x) for x in args.n.split(",")):
            for mode in modes:
                prob = _problem(ap, layout_name, n, mode)
                block, cfgs = args.block, configs
                if picks:
                    if pick_key(prob, args.backend) not in picks:
                        ap.error(f"--picks {args.picks}: no {args.backend} row for "
                                 f"{layout_name} N={n} {mode}")
                    block, config = picks[pick_key(prob, args.backend)]
                    cfgs = [config]
                failed += run_problem(module, args, prob, layout_name, mode, cfgs, block)
    return 1 if failed else 0


def run_problem(module, args, prob, layout_name: str, mode: str, configs, block) -> int:
    """Every configuration on one problem (the layout re-blocked to ``block`` if given), one
    JSON line each; returns how many failed."""
    layout = prob.build_layout()
    run_layout = autotune.reblock(layout, block) if block else layout
    scale = prob.head_dim ** -0.5
    q, k, v = prob.inputs("cuda")
    fresh = [torch.randn_like(q) for _ in range(3)]  # unseeded: fresh inputs every run
    ref = check.Reference(*fresh, layout, scale, mode)
    failed = 0
    for config in configs:
        row = measure(module, args, prob, layout_name, mode, layout, run_layout, scale,
                      (q, k, v), ref, fresh, config)
        failed += not row["ok"]
        print(json.dumps(row), flush=True)
    del q, k, v, fresh, ref
    torch.cuda.empty_cache()
    return failed


def measure(module, args, prob, layout_name, mode, layout, run_layout, scale, qkv, ref, fresh,
            config) -> dict:
    """One configuration's row: the check against ``ref`` on ``fresh`` inputs, then (if it
    passed) the timing on ``qkv``. An exception is the row's ``error``, not the end of the run."""
    row = {"backend": args.backend, "layout": layout_name, "n_ctx": layout.n_ctx, "mode": mode,
           "block": run_layout.block, "config": config, "ok": False}
    if args.tag:
        row["tag"] = args.tag
    try:
        verdict = ref.check_backend(
            lambda a, b, c: module.attention(a, b, c, run_layout, scale, config), inputs=fresh)
        row.update(check=verdict.check, err=verdict.err, tol=verdict.tol, ok=verdict.ok)
        if verdict.ok:
            q, k, v = qkv
            do = torch.randn_like(q) if mode == "fwd+bwd" else None
            run = closure(module, q, k, v, run_layout, scale, config, mode, do)
            grads = [q, k, v] if do is not None else None
            t = timing.bench(run, grad_to_none=grads)
            flops = timing.attention_flops(layout, prob.batch, prob.head_dim, mode)
            split = timing.host_device_split(run, grad_to_none=grads)
            row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
                       tflops=timing.tflops(flops, t.median_ms), host_ms=split.host_ms,
                       device_ms=split.device_ms)
            if args.kernels:
                row["kernels_us"] = timing.kernel_times(run, grad_to_none=grads)
    except Exception as exc:  # one failing configuration is a data point
        row["error"] = repr(exc)[:400]
    row["env"] = dataclasses.asdict(environment.collect())
    return row


if __name__ == "__main__":
    sys.exit(main())
