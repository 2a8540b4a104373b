"""``stbench tune``: autotune one problem (layout block granularity and backend configs), or
measure the tuner against exhaustive search (TARGETS.md item 5).

    stbench tune --layout st_mix --n-ctx 16384                     # standard problem, cached
    stbench tune --layout causal --n-ctx 256 --batch 1 --heads 2 --head-dim 32 \\
        --dtype float32 --backends dense,sdpa --strategy exhaustive
    stbench tune --evaluate --out out/item5 --ns 4096,16384 --backends triton   # item 5
    stbench tune --list                                             # what the cache holds
"""

from __future__ import annotations

import argparse
import json

from stbench.commands import csv_list


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="autotune a problem (block granularity + backend configs), cache the pick",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--layout", default="causal", help="a layout spec (stbench.problems)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--batch", type=int, default=None, help="default: 65536 // N")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--mode", default="fwd", choices=("fwd", "fwd+bwd"))
    p.add_argument("--backends", type=csv_list, default=None,
                   help="comma-separated (default: every backend that runs here)")
    p.add_argument("--strategy", default="local", choices=("local", "exhaustive"))
    p.add_argument("--objective", default="time", choices=("time", "memory", "time_under_budget"))
    p.add_argument("--memory-budget", type=float, default=None, help="bytes (time_under_budget)")
    p.add_argument("--cache", default=None,
                   help="cache file (default: $STBENCH_CACHE_DIR/tune.json or "
                   "~/.cache/stbench/tune.json)")
    p.add_argument("--rows", default=None, help="append every candidate's row to this JSONL")
    p.add_argument("--device", default=None)
    p.add_argument("--precompile-workers", type=int, default=0,
                   help="processes that compile each batch of candidates side by side before "
                   "it is timed (0: compile on first call)")
    p.add_argument("--evaluate", action="store_true",
                   help="item 5: exhaustive vs --strategy on standard problems into --out")
    p.add_argument("--out", default=None, help="folder for --evaluate (tune_eval.jsonl)")
    p.add_argument("--ns", type=lambda s: [int(x) for x in csv_list(s)], default=[4096, 16384],
                   help="N values for --evaluate (default 4096,16384)")
    p.add_argument("--layouts", type=csv_list,
                   default=["causal", "local", "strided", "fixed", "st_mix"],
                   help="layouts for --evaluate")
    p.add_argument("--list", action="store_true", help="print the cache's entries and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from stbench import problems
    from stbench.tuning import autotune, cache

    console = Console(stderr=True)
    if args.list:
        data = cache.load(args.cache)
        for e in data["entries"].values():
            console.print(f"N={e.get('n_ctx')} H={e.get('heads')} B={e['batch']} "
                          f"D={e.get('head_dim')} {e.get('dtype')} {e.get('mode')} "
                          f"layout {e['layout_hash'][:10]} "
                          f"(block {e.get('layout_block')}): {e['backend']} block {e['block']} "
                          f"{json.dumps(e['config'])} {e.get('median_ms')} ms")
        console.print(f"{len(data['entries'])} entries in {args.cache or cache.default_path()}")
        return 0
    try:
        if args.evaluate:
            from stbench.tuning import evaluate

            if not args.out:
                raise ValueError("--evaluate needs --out DIR")
            probs = [problems.Problem(_spec(name), n,
                                      args.batch or problems.batch_for(n), args.heads,
                                      args.head_dim, args.dtype, args.mode)
                     for n in args.ns for name in args.layouts]
            from pathlib import Path

            recs = evaluate.evaluate(probs, args.backends, device=args.device or _dev(),
                                     out_dir=args.out, strategy=args.strategy,
                                     cache_path=args.cache or Path(args.out) / "tune.json")
            for r in recs:
                if r.get("ratio") is None:
                    console.print(f"{r['problem']}: {r.get('status')}")
                    continue
                console.print(f"{r['problem']}: pick/best = {r['ratio']:.3f}, tune "
                              f"{r['tune_s']:.1f} s (exhaustive {r['exhaustive_s']:.1f} s), "
                              f"cached lookup {r['lookup_warm_ms']:.3f} ms")
            return 0
        prob = problems.Problem(_spec(args.layout), args.n_ctx,
                                args.batch or problems.batch_for(args.n_ctx), args.heads,
                                args.head_dim, args.dtype, args.mode)
        res = _tune_one(autotune, prob, args)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(f"{prob.label()}: {res.evaluated} of {res.candidates} candidates evaluated in "
                  f"{res.seconds:.1f} s")
    for name, p in res.per_backend.items():
        console.print(f"  {name}: block {p.block} {json.dumps(p.config)} {p.median_ms:.4g} ms")
    if res.best is None:
        console.print("[yellow]no valid candidate[/yellow]")
        return 1
    console.print(f"pick: {res.best.backend} block {res.best.block} {json.dumps(res.best.config)}"
                  f" ({res.best.median_ms:.4g} ms), cached in {args.cache or cache.default_path()}")
    return 0


def _tune_one(autotune, prob, args):
    """``autotune.tune`` for the command's problem, with a precompiler when asked for."""
    from stbench.tuning.precompile import Precompiler

    device = args.device or _dev()
    if args.precompile_workers < 0:
        raise ValueError(f"--precompile-workers {args.precompile_workers}: use 0 (off) or more")
    pre = Precompiler(args.precompile_workers, device) if args.precompile_workers else None
    try:
        return autotune.tune(prob, args.backends, device=device, strategy=args.strategy,
                             objective=args.objective, memory_budget=args.memory_budget,
                             cache_path=args.cache, rows_path=args.rows, precompiler=pre)
    finally:
        if pre is not None:
            pre.close()


def _spec(name: str):
    """The named spec, built at the largest block that fits when its own does not."""
    from dataclasses import replace

    from stbench import problems

    return replace(problems.layout_spec(name), fit_block=True)


def _dev() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
