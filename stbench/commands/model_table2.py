"""``stbench model table2``: the Sparse Transformer paper's Table 2 at small scale, run fairly:
dense vs fixed vs strided attention.

Fair means: the same model size (the ``text-8k`` preset; only the attention layouts differ:
reference/model.py), the same Wikipedia bytes (``stbench.reference.data`` 'wiki'), the same
seed, and for each pattern

1. its own learning rate: a short run (``--lr-steps``, the same warm-up and cosine schedule
   compressed to it) at each value of ``--lr-grid`` (default ``LR_GRID``: 2.5e-4 .. 2e-3 in
   factors of 2, a decade around what AdamW needs for a model of this size), the value with
   the lowest validation bits per byte wins;
2. equal tokens: ``--steps`` x ``--batch-size`` x N for every pattern (no wall-clock cap unless
   ``--minutes`` is given; a pattern cut short says so, ``equal_tokens`` false);
3. the convergence rule: validation bits per byte (the whole split, every ``steps / 20``
   steps) flat within ``FLAT_REL`` = 1 % over the last ``FLAT_TAIL`` = 20 % of the steps
   ((max - min) / min of those evaluations); ``converged`` says whether it held, and the table
   says it plainly either way.

The final numbers are the whole validation and test splits' bits per byte of the last
checkpoint; the time per step is the median seconds per training iteration (first logged
interval, compilation and tuning, excluded). Under torchrun (``--devices all``) each run trains
data-parallel on every GPU with the same global batch (reference/parallel.py) and evaluates
sharded. Under ``--out``:

    <pattern>/lr-<value>/      the learning-rate trials (log.jsonl, checkpoint.pt)
    <pattern>/                 the final run (log.jsonl, checkpoint.pt)
    table2.jsonl   one row per pattern: the chosen lr and every trial's bpb, steps, tokens,
                   val_bpb, test_bpb, converged, flatness, s_per_iter_median, peak memory, ...
    table2.md      the table, the verdicts on the paper's ordering, beside the paper's numbers
    curves.png     validation bpb and training loss against step and against wall-clock time

On GPUs (about 30 min of one H200 with the defaults, estimated from the step times in
reports/model/h200/table2; K GPUs take about 1/K of it; docs/scale-out.md):

    stbench model table2 --out reports/model/h200/table2 --data-dir DATA --devices all

``--resume`` adds patterns to a folder run with the same settings (one pattern per command where
commands are time-limited) and rewrites the table from every row. ``--smoke`` runs the same
path on the CPU in seconds (pydoc fixture, a tiny model, N = 256, two learning rates, dense
backend) to prove it before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# The paper's Table 2 (Enwik8, context 12,288): bits per byte, seconds per iteration.
PAPER_TABLE2 = {"dense": (1.00, 1.31), "fixed": (0.99, 0.55), "strided": (1.13, 0.35)}
PATTERNS = ("dense", "fixed", "strided")
LR_GRID = (2.5e-4, 5e-4, 1e-3, 2e-3)
FLAT_REL = 0.01  # convergence: validation bpb within 1 % ...
FLAT_TAIL = 0.2  # ... over the last 20 % of the steps
CURVE_POINTS = 20  # validation evaluations per final run
SETTINGS = ("n_ctx", "stride", "block", "steps", "batch_size", "lr_grid", "lr_steps",
            "warmup_frac", "backend", "dtype", "seed", "smoke")  # equal for every pattern
NO_WORSE_REL = 0.01  # "sparse no worse than dense": within 1 % of dense's bits per byte
SMOKE_EVAL_BATCHES = 2  # --smoke evaluates on the first 2 batches only (the CPU is slow)


def register(actions) -> argparse.ArgumentParser:
    """Add the ``table2`` action to ``stbench model``'s subparsers."""
    p = actions.add_parser("table2", help="the paper's Table 2, fairly: dense vs fixed vs "
                           "strided models, same size, data and tokens, each lr tuned",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (written only there)")
    p.add_argument("--data-dir", default=None, help="folder from `stbench data prepare`")
    p.add_argument("--patterns", default=",".join(PATTERNS),
                   help=f"comma-separated, of {','.join(PATTERNS)}")
    p.add_argument("--n-ctx", type=int, default=8192, help="context, >= 8192 for the real run")
    p.add_argument("--stride", type=int, default=128, help="l of fixed / strided (paper: 128)")
    p.add_argument("--block", type=int, default=32, help="layout block; fixed's c = block")
    p.add_argument("--steps", type=int, default=4000, help="training steps of each final run")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (global)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per forward pass on each process (gradient accumulation)")
    p.add_argument("--lr-grid", default=",".join(f"{x:g}" for x in LR_GRID),
                   help="peak learning rates tried per pattern (one value: no search)")
    p.add_argument("--lr-steps", type=int, default=1000, help="steps of each learning-rate trial")
    p.add_argument("--warmup-frac", type=float, default=0.05, help="warm-up, fraction of steps")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap per run (unequal tokens if it bites; default: none)")
    p.add_argument("--backend", default="triton", help="attention backend for every pattern")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--device", default="auto", help="cuda, cpu (default: auto; under torchrun "
                   "each process takes cuda:LOCAL_RANK)")
    p.add_argument("--devices", default=None, metavar="all|K",
                   help="train each run data-parallel on K processes (all: every GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    p.add_argument("--resume", action="store_true",
                   help="keep the patterns already in OUT/table2.jsonl (same settings), run the "
                   "rest of --patterns and rewrite the table from every row (one pattern per "
                   "command where commands are time-limited)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole path")
    return p


def smoke_settings(args) -> None:
    """``--smoke``: N = 256, l = 16, block 16 (strided chunks of N/l = 16 tokens = one block;
    fixed at l = block degenerates to causal: fine for proving the path, not for measuring)."""
    args.n_ctx, args.stride, args.block = 256, 16, 16
    args.steps, args.lr_steps, args.batch_size, args.lr_grid = 5, 1, 2, "1e-3,3e-3"
    args.backend, args.dtype = "dense", "fp32"
    if args.device == "auto":
        args.device = "cpu"


def model_config(args, pattern: str):
    from stbench.reference.model import preset

    base = dict(n_ctx=args.n_ctx, attention=pattern, block=args.block, stride=args.stride)
    return preset("tiny" if args.smoke else "text-8k", **base)


def flatness(evals: list[dict], steps: int) -> float | None:
    """(max - min) / min of the validation bpb evaluated in the last ``FLAT_TAIL`` of ``steps``
    (None with fewer than two evaluations there)."""
    tail = [e["bpd"] for e in evals if e["step"] >= (1 - FLAT_TAIL) * steps]
    return (max(tail) - min(tail)) / min(tail) if len(tail) >= 2 else None


def train_run(args, pattern: str, lr: float, steps: int, splits, run_dir: Path, ranks,
              eval_every: int) -> list[dict]:
    """Train one model; returns its log records (rank 0 reads them, others get [])."""
    from stbench.reference import train

    tcfg = train.TrainConfig(
        steps=steps, batch_size=args.batch_size, lr=lr,
        warmup=max(1, round(args.warmup_frac * steps)), eval_every=eval_every,
        eval_batch_size=args.batch_size, eval_batches=SMOKE_EVAL_BATCHES if args.smoke else None,
        log_every=max(1, min(10, steps // 20)), seed=args.seed, dtype=args.dtype,
        backend=args.backend, dataset="pydoc" if args.smoke else "wiki")
    train.train(model_config(args, pattern), tcfg, splits, run_dir, device=ranks.device,
                time_limit_s=60 * args.minutes if args.minutes else None, ranks=ranks,
                micro_batch=args.micro_batch)
    log = run_dir / "log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if ranks.is_main else []


def final_bpb(args, run_dir: Path, split, ranks, batches) -> tuple[float, int]:
    """(bits per byte, targets) of the run's checkpoint on ``split``, sharded over the ranks."""
    from stbench.reference import bpd, train

    model, _ = train.model_from_checkpoint(run_dir / "checkpoint.pt", args.backend, ranks.device)
    res = bpd.evaluate(model, train.sequences_for(model.cfg, split), args.batch_size,
                       ranks.device, dtype=bpd.parse_dtype(args.dtype), max_batches=batches,
                       ranks=ranks)
    return res.bpd, res.targets


def run_pattern(args, pattern: str, splits, out: Path, ranks, grid) -> dict:
    """The learning-rate trials, then the final run at the best; rank 0's row."""
    trials = {}
    for lr in grid if len(grid) > 1 else ():
        log = train_run(args, pattern, lr, args.lr_steps, splits, out / pattern / f"lr-{lr:g}",
                        ranks, args.lr_steps)
        trials[f"{lr:g}"] = next((r["bpd"] for r in reversed(log) if r["event"] == "eval"),
                                 None)
    from stbench.distributed import broadcast

    best = broadcast(min(grid, key=lambda lr: trials.get(f"{lr:g}") or float("inf"))
                     if ranks.is_main else None, ranks)
    run_dir = out / pattern
    log = train_run(args, pattern, best, args.steps, splits, run_dir, ranks,
                    max(1, args.steps // CURVE_POINTS))
    cut = SMOKE_EVAL_BATCHES if args.smoke else None
    val = final_bpb(args, run_dir, splits["validation"], ranks, cut)
    test = final_bpb(args, run_dir, splits["test"], ranks, cut)
    if not ranks.is_main:
        return {}
    evals = [r for r in log if r["event"] == "eval"]
    train_recs = [r for r in log if r["event"] == "train"]
    iters = [r["s_per_iter"] for r in train_recs][1:]  # drop the compilation interval
    steps = evals[-1]["step"] if evals else 0
    flat = flatness(evals, args.steps)
    from stbench.reference.model import layer_layout

    cfg = model_config(args, pattern)
    return {
        "pattern": pattern, "backend": args.backend, "dtype": args.dtype, "lr": best,
        "lr_trials": trials, "lr_steps": args.lr_steps, "steps": steps,
        "tokens": steps * args.batch_size * args.n_ctx, "equal_tokens": steps == args.steps,
        "val_bpb": val[0], "val_targets": val[1], "test_bpb": test[0], "test_targets": test[1],
        "val_full": not args.smoke, "flatness": flat,
        "converged": flat is not None and flat <= FLAT_REL and steps == args.steps,
        "s_per_iter_median": statistics.median(iters) if iters else None,
        "peak_mem_bytes": max((r["peak_mem_bytes"] for r in train_recs), default=None),
        "world_size": ranks.world_size, "micro_batch": args.micro_batch,
        "model_config": cfg.to_dict(),
        "layout_density": [layer_layout(cfg, i).token_density for i in range(cfg.layers)],
    }


def verdicts(rows: list[dict]) -> list[str]:
    """The paper's ordering at this scale, in plain words."""
    by = {r["pattern"]: r for r in rows}
    lines = []
    if "dense" in by:
        for p in ("fixed", "strided"):
            if p in by:
                rel = by[p]["val_bpb"] / by["dense"]["val_bpb"] - 1
                lines.append(f"- {p} no worse than dense (within {NO_WORSE_REL:.0%}): "
                             f"{'yes' if rel <= NO_WORSE_REL else 'no'} ({rel:+.1%})")
    if "fixed" in by and "strided" in by:
        gap = by["strided"]["val_bpb"] / by["fixed"]["val_bpb"] - 1
        paper = PAPER_TABLE2["strided"][0] / PAPER_TABLE2["fixed"][0] - 1
        lines.append(f"- strided against fixed: {gap:+.1%} (paper: {paper:+.1%})")
    bad = [r["pattern"] for r in rows if not r["converged"]]
    lines.append(f"- converged by the rule (validation bpb flat within {FLAT_REL:.0%} over the "
                 f"last {FLAT_TAIL:.0%} of the steps, all steps done): "
                 + ("every run" if not bad else f"NOT {', '.join(bad)}; their numbers are "
                    "not final"))
    return lines


def write_table(rows, out: Path, grid) -> None:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"

    lines = ["| attention | lr | val bits/byte | test bits/byte | s / iter | steps | flat | "
             "converged | paper bpb | paper s / iter |", "|" + "---|" * 10]
    for r in rows:
        pb, ps = PAPER_TABLE2.get(r["pattern"], ("-", "-"))
        lines.append(f"| {r['pattern']} | {r['lr']:g} | {r['val_bpb']:.3f} | "
                     f"{r['test_bpb']:.3f} | {num(r['s_per_iter_median'], '.3f')} | "
                     f"{r['steps']} | {num(r['flatness'], '.2%')} | "
                     f"{'yes' if r['converged'] else 'no'} | {pb} | {ps} |")
    lines += ["", f"Learning rate per pattern: the best of {', '.join(f'{x:g}' for x in grid)} "
              f"after {rows[0]['lr_steps']} steps (validation bpb); then {rows[0]['steps']} "
              f"steps at {rows[0]['tokens']:,} tokens each, {rows[0]['world_size']} "
              "process(es).", "", *verdicts(rows)]
    (out / "table2.md").write_text("\n".join(lines) + "\n")


def plot_curves(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in rows:
        log = [json.loads(x) for x in (out / r["pattern"] / "log.jsonl").read_text().splitlines()]
        t0 = log[0]["time"]
        tr = [x for x in log if x["event"] == "train"]
        ev = [x for x in log if x["event"] == "eval"]
        (line,) = axes[0].plot([x["step"] for x in tr], [x["loss_bpd"] for x in tr], alpha=0.4)
        label = f"{r['pattern']} (lr {r['lr']:g})"
        axes[0].plot([x["step"] for x in ev], [x["bpd"] for x in ev], "o-", color=line.get_color(),
                     label=label)
        axes[1].plot([x["time"] - t0 for x in ev], [x["bpd"] for x in ev], "o-",
                     color=line.get_color(), label=label)
    axes[0].set(xlabel="step", ylabel="bits per byte", title="train (faint) and validation")
    axes[1].set(xlabel="wall-clock seconds", ylabel="validation bits per byte")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=130)
    plt.close(fig)


def _grid(text: str) -> tuple[float, ...]:
    try:
        grid = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        grid = ()
    if not grid or any(lr <= 0 for lr in grid):
        raise ValueError(f"--lr-grid {text!r}: write positive learning rates, e.g. 5e-4,1e-3")
    return grid


def _settings(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


def _earlier_rows(args, out: Path, patterns: list[str]) -> tuple[list[dict], list[str]]:
    """(rows kept from ``out/table2.jsonl``, patterns still to run); ValueError for a folder
    that holds results without ``--resume``, a pattern cut short, or other settings."""
    table = out / "table2.jsonl"
    rows = [json.loads(x) for x in table.read_text().splitlines()] if table.exists() else []
    done = {r["pattern"] for r in rows}
    cut = [p for p in patterns if (out / p).exists() and p not in done]
    if (rows or cut) and not args.resume:
        raise ValueError(f"--out {out} already holds results ({', '.join(sorted(done) + cut)}):"
                         " choose a fresh folder, or --resume to add patterns")
    if cut:
        raise ValueError(f"--out {out}: {', '.join(cut)} did not finish; remove "
                         f"{', '.join(str(out / p) for p in cut)} to run it again")
    other = [r["pattern"] for r in rows if r.get("settings") != _settings(args)]
    if other:
        raise ValueError(f"--out {out}: {', '.join(other)} ran with other settings "
                         f"({', '.join(SETTINGS)} must match for a fair table)")
    return rows, [p for p in patterns if p not in done]


def run(args) -> int:
    """Train and evaluate each pattern into ``--out``; ValueError for bad options."""
    from stbench import distributed, environment
    from stbench.reference import data

    if args.smoke:
        smoke_settings(args)
    if (code := distributed.launch_if_asked(args.devices, args.argv)) is not None:
        return code
    out = Path(args.out)
    grid = _grid(args.lr_grid)
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    unknown = sorted(set(patterns) - set(PATTERNS))
    if unknown or not patterns:
        raise ValueError(f"--patterns: unknown {unknown}; choose from {','.join(PATTERNS)}")
    rows, patterns = _earlier_rows(args, out, patterns)
    splits = data.load("pydoc" if args.smoke else "wiki", args.data_dir)
    with distributed.process_group(None if args.device == "auto" else args.device) as ranks:
        env = environment.collect().to_dict()
        for pattern in patterns:
            t = time.perf_counter()
            row = run_pattern(args, pattern, splits, out, ranks, grid)
            if not ranks.is_main:
                continue
            row.update(env=env, smoke=args.smoke, wall_s=time.perf_counter() - t,
                       settings=_settings(args))
            rows.append(row)
            with open(out / "table2.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{pattern:8s} lr {row['lr']:g}  val {row['val_bpb']:.4f} bpb  "
                  f"{row['s_per_iter_median']} s/iter  converged {row['converged']}", flush=True)
    if not ranks.is_main:
        return 0
    rows.sort(key=lambda r: PATTERNS.index(r["pattern"]))
    write_table(rows, out, grid)
    plot_curves(rows, out)
    print((out / "table2.md").read_text())
    return 0
