"""``stbench sweep``: run a grid of problems x layouts x backends x modes into DIR/results.jsonl.

    stbench sweep --preset quick --out out/quick
    stbench sweep --preset standard --out out/std --isolate --tune --max-minutes 8
    stbench sweep --config my_grid.toml --out out/mine --resume
    stbench sweep --preset standard --out out/again --picks reports/standard/results.jsonl
"""

from __future__ import annotations

import argparse
import shlex
import time

from stbench.commands import csv_list


def register(subparsers) -> None:
    from stbench.sweep.config import preset_names

    p = subparsers.add_parser(
        "sweep", help="run a benchmark grid (preset or TOML) into DIR/results.jsonl",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=preset_names(), metavar="NAME",
                     help="a named grid in stbench/sweep/presets: " + ", ".join(preset_names()))
    src.add_argument("--config", help="a TOML file with the same keys as the presets")
    p.add_argument("--out", required=True, help="output folder (the sweep writes only here)")
    p.add_argument("--resume", action="store_true", help="skip rows already in DIR/results.jsonl")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="with --resume: move unreadable lines of results.jsonl to "
                   "results.jsonl.bad (a warning names each) and measure their rows again")
    p.add_argument("--isolate", action="store_true",
                   help="run each (N, layout, dtype) group in a worker subprocess; a crash or a "
                   "timeout becomes a row and a fresh worker continues")
    p.add_argument("--tune", action="store_true",
                   help="autotune each (problem, backend) first and measure the pick")
    p.add_argument("--picks", default=None, metavar="RESULTS.jsonl",
                   help="re-measure the (block, config) of each matching ok row of an earlier "
                   "sweep (regression check after a kernel change); other rows as usual")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly before starting a row past this budget (then --resume)")
    p.add_argument("--ns", type=lambda s: [int(x) for x in csv_list(s)], default=None,
                   help="override N values, comma-separated")
    p.add_argument("--layouts", type=csv_list, default=None, help="override layouts, comma-separated")
    p.add_argument("--backends", type=csv_list, default=None,
                   help="override backends, comma-separated")
    p.add_argument("--modes", type=csv_list, default=None, help="override modes (fwd,fwd+bwd)")
    p.add_argument("--precompile-workers", type=int, default=None,
                   help="processes that compile kernels ahead of timing (0: off; default: the "
                   "config's precompile_workers)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid (rows, and which layouts exist at which block) and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from stbench import manifest
    from stbench.sweep import SweepConfig, SweepError, run_sweep

    console = Console(stderr=True)
    try:
        cfg = SweepConfig.preset(args.preset) if args.preset else SweepConfig.from_toml(args.config)
        cfg = cfg.with_overrides(ns=args.ns, layouts=args.layouts, backends=args.backends,
                                 modes=args.modes, precompile_workers=args.precompile_workers)
        if args.max_minutes is not None and args.max_minutes <= 0:
            raise SweepError("--max-minutes must be positive")
        if args.dry_run:
            return _dry_run(cfg, console)
        started = time.time()
        counts = run_sweep(cfg, args.out, resume=args.resume, isolate=args.isolate,
                           tune=args.tune, max_minutes=args.max_minutes, device=args.device,
                           progress=not args.no_progress, picks_path=args.picks,
                           skip_bad_lines=args.skip_bad_lines)
        manifest.write_for_run(args.out, shlex.join(["stbench", *args.argv]), started,
                               time.time(), description=f"stbench sweep {cfg.name}"
                               + (" (stopped at --max-minutes)" if counts["stopped"] else ""))
    except (SweepError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    stopped = counts.pop("stopped")
    skipped = counts.pop("skipped")
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no new rows"
    console.print(f"sweep {cfg.name}: {summary}; {skipped} already measured; rows in "
                  f"{args.out}/results.jsonl")
    if stopped:
        console.print("[yellow]stopped at --max-minutes; rerun with --resume to continue[/yellow]")
    return 0


def _dry_run(cfg, console) -> int:
    """The grid's size and each (layout, N)'s block (or why it does not exist)."""
    from stbench.sweep import plan_groups

    groups = plan_groups(cfg)
    console.print(f"sweep {cfg.name}: {len(groups)} groups (N x layout x dtype), "
                  f"{sum(len(g.items) for g in groups)} rows (x modes {list(cfg.modes)} "
                  f"x backends {list(cfg.backends)})")
    for g in groups:
        spec = cfg.spec(g.layout)
        try:
            lay = spec.build(g.n, cfg.heads)
            what = (f"block {lay.block}, block density {lay.block_density:.4f}, "
                    f"token density {lay.token_density:.4f}")
        except ValueError as exc:
            what = f"does not exist: {exc}"
        console.print(f"  {g.layout:12s} N={g.n:<6d} B={cfg.batch_for(g.n):<4d} {what}",
                      soft_wrap=True)
    return 0
