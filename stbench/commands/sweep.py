"""``stbench sweep``: run a grid of problems x layouts x backends x modes into DIR/results.jsonl.

    stbench sweep --preset quick --out out/quick
    stbench sweep --preset standard --out out/std --isolate --tune --max-minutes 8
    stbench sweep --config my_grid.toml --out out/mine --resume
    stbench sweep --preset standard --out out/again --picks reports/standard/h200/results.jsonl
    stbench sweep --preset standard --out out/std --isolate --tune --devices all
    torchrun --nproc-per-node 8 -m stbench sweep --preset standard --out out/std --tune

``--devices all|K`` starts torchrun for you (K processes, one GPU each); under torchrun (several
hosts too) the grid is split over the ranks by a cost model and merged into DIR/results.jsonl
(stbench/sweep/sharding.py; docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import shlex
import time

from stbench.commands import csv_list, out_folder, positive_ints, torch_device
from stbench.commands.tables import Column, Rows, add_format_option, console, emit, say


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
    p.add_argument("--ns", type=positive_ints, default=None,
                   help="override N values, comma-separated")
    p.add_argument("--layouts", type=csv_list, default=None, help="override layouts, comma-separated")
    p.add_argument("--backends", type=csv_list, default=None,
                   help="override backends, comma-separated")
    p.add_argument("--modes", type=csv_list, default=None, help="override modes (fwd,fwd+bwd)")
    p.add_argument("--precompile-workers", type=int, default=None,
                   help="processes that compile kernels ahead of timing (0: off; default: the "
                   "config's precompile_workers)")
    p.add_argument("--device", type=torch_device, default=None,
                   help="cuda or cpu (default: cuda if available; under torchrun each process "
                   "takes cuda:LOCAL_RANK)")
    p.add_argument("--devices", default=None, metavar="all|K",
                   help="shard the sweep over K processes (all: every GPU) started with "
                   "torchrun; with --dry-run: print each rank's share")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid (rows, and which layouts exist at which block) and exit")
    add_format_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from stbench import distributed, manifest
    from stbench.sweep import SweepConfig, SweepError, run_sweep, sharding

    con = console(stderr=True)
    cfg = SweepConfig.preset(args.preset) if args.preset else SweepConfig.from_toml(args.config)
    cfg = cfg.with_overrides(ns=args.ns, layouts=args.layouts, backends=args.backends,
                             modes=args.modes, precompile_workers=args.precompile_workers)
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise SweepError("--max-minutes must be positive")
    if args.dry_run:
        return _dry_run(cfg, args)
    out_folder("--out", args.out)
    if (code := distributed.launch_if_asked(args.devices, args.argv)) is not None:
        return code
    started, world_size, command = time.time(), 1, ["stbench", *args.argv]
    options = dict(resume=args.resume, isolate=args.isolate, tune=args.tune,
                   max_minutes=args.max_minutes, device=args.device,
                   progress=not args.no_progress, picks_path=args.picks,
                   skip_bad_lines=args.skip_bad_lines)
    if distributed.launched() or sharding.has_shards(args.out):
        counts, ranks = sharding.run_sharded(cfg, args.out, say=lambda t: say(con, t), **options)
        if not ranks.is_main:
            return 0  # rank 0 writes the manifest and says what was done
        world_size = ranks.world_size
        if distributed.launched():  # the rerunnable command: this one under torchrun
            command = ["torchrun", f"--nnodes={world_size // ranks.local_world_size}",
                       f"--nproc-per-node={ranks.local_world_size}", "-m", *command]
    else:
        counts = run_sweep(cfg, args.out, **options)
    manifest.write_for_run(args.out, shlex.join(command), started, time.time(),
                           description=f"stbench sweep {cfg.name}"
                           + (" (stopped at --max-minutes)" if counts["stopped"] else ""),
                           world_size=world_size)
    stopped = counts.pop("stopped")
    skipped = counts.pop("skipped")
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no new rows"
    say(con, f"sweep {cfg.name}: {summary}; {skipped} already measured; rows in "
        f"{args.out}/results.jsonl")
    if stopped:
        say(con, "stopped at --max-minutes; rerun with --resume to continue", style="yellow")
    return 0


def _density(x) -> str:
    return f"{x:.4f}"


def _dry_run(cfg, args) -> int:
    """The grid's size and each (layout, N)'s block (or why it does not exist); with
    ``--devices`` each rank's share."""
    from stbench import distributed
    from stbench.sweep import default_device, plan_groups, sharding

    groups = plan_groups(cfg)
    rows = []
    for g in groups:
        row = dict(layout=g.layout, n_ctx=g.n, batch=cfg.batch_for(g.n), dtype=g.dtype)
        try:
            lay = cfg.spec(g.layout).build(g.n, cfg.heads)
            row.update(block=lay.block, block_density=lay.block_density,
                       token_density=lay.token_density)
        except ValueError as exc:
            row["error"] = f"does not exist: {exc}"
        rows.append(row)
    emit(Rows(f"sweep {cfg.name}: {len(groups)} groups (N x layout x dtype), "
              f"{sum(len(g.items) for g in groups)} rows (x modes {list(cfg.modes)} x backends "
              f"{list(cfg.backends)})",
              (Column("layout"), Column("n_ctx", "N", right=True),
               Column("batch", "B", right=True), Column("dtype"), Column("block", right=True),
               Column("block_density", "block density", _density, right=True),
               Column("token_density", "token density", _density, right=True), Column("error")),
              tuple(rows)), args.format, args.width)
    if args.devices:
        con = console(stderr=False)
        for line in sharding.plan_text(cfg, distributed.device_count(args.devices),
                                       args.device or default_device(), args.tune):
            say(con, line)
    return 0
