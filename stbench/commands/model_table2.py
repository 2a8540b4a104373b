"""``stbench model table2``: the Sparse Transformer paper's Table 2 in miniature: dense vs fixed
vs strided attention.

Same model size, same data (Wikipedia bytes, ``stbench.reference.data`` 'wiki'), same steps,
batch, learning rate, seed and wall-clock cap for every pattern; only the attention layouts
differ (reference/model.py: dense = causal; fixed = the paper's fixed pattern, l = stride,
c = block; strided = layers alternating local(l) and strided(l)). Per pattern it writes, under
``--out``:

    <pattern>/log.jsonl, <pattern>/checkpoint.pt   (reference/train.py)
    table2.jsonl   one row per pattern: validation bits per byte on the WHOLE validation split,
                   median seconds per training iteration (first logged interval, compilation and
                   autotuning, excluded), peak memory, steps done, configs, environment
    table2.md      the table, beside the paper's (Enwik8, context 12,288)
    curves.png     validation bpb and training loss against step and against wall-clock time

For the GPU (one H200, a few minutes per pattern):

    stbench model table2 --out reports/model/h200 --data-dir DATA --backend triton

``--smoke`` runs the same path on the CPU in seconds (pydoc fixture, a tiny model, N = 256,
dense backend) to prove it before GPU time is spent on it.
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


def register(actions) -> None:
    """Add the ``table2`` action to ``stbench model``'s subparsers."""
    p = actions.add_parser("table2", help="the paper's Table 2 in miniature: dense vs fixed vs "
                           "strided models, same size, data and steps",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (written only there)")
    p.add_argument("--data-dir", default=None, help="folder from `stbench data prepare`")
    p.add_argument("--patterns", default=",".join(PATTERNS),
                   help=f"comma-separated, of {','.join(PATTERNS)}")
    p.add_argument("--n-ctx", type=int, default=8192, help="context, >= 8192 for the real run")
    p.add_argument("--stride", type=int, default=128, help="l of fixed / strided (paper: 128)")
    p.add_argument("--block", type=int, default=32, help="layout block; fixed's c = block")
    p.add_argument("--steps", type=int, default=600, help="training steps per pattern")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate, every pattern")
    p.add_argument("--warmup", type=int, default=60, help="learning-rate warm-up steps")
    p.add_argument("--minutes", type=float, default=6.0, help="wall-clock cap per pattern")
    p.add_argument("--backend", default="triton", help="attention backend for every pattern")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--device", default="cuda", help="torch device")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole path")
    return p


def smoke_settings(args) -> None:
    """``--smoke``: N = 256, l = 16, block 16 (strided chunks of N/l = 16 tokens = one block;
    fixed at l = block degenerates to causal: fine for proving the path, not for measuring)."""
    args.n_ctx, args.stride, args.block = 256, 16, 16
    args.steps, args.batch_size, args.warmup, args.minutes = 2, 1, 1, 2.0
    args.backend, args.dtype, args.device = "dense", "fp32", "cpu"


def model_config(args, pattern: str):
    from stbench.reference.model import preset

    base = dict(n_ctx=args.n_ctx, attention=pattern, block=args.block, stride=args.stride)
    if args.smoke:
        return preset("tiny", **base)
    return preset("text-8k", **base)


def run_pattern(args, pattern: str, splits, out: Path) -> dict:
    from stbench.reference import bpd, train

    cfg = model_config(args, pattern)
    tcfg = train.TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        eval_every=max(1, args.steps // 6), eval_batch_size=args.batch_size,
        eval_batches=2 if args.smoke else 8,  # curves: a few batches; the final number: all
        log_every=max(1, min(10, args.steps // 20)), seed=args.seed, dtype=args.dtype,
        backend=args.backend, dataset="pydoc" if args.smoke else "wiki",
    )
    run_dir = out / pattern
    train.train(cfg, tcfg, splits, run_dir, device=args.device, time_limit_s=60 * args.minutes)
    model, state = train.model_from_checkpoint(run_dir / "checkpoint.pt", args.backend, args.device)
    seqs = train.sequences_for(cfg, splits["validation"])
    val = bpd.evaluate(model, seqs, args.batch_size, args.device, dtype=bpd.parse_dtype(args.dtype),
                       max_batches=2 if args.smoke else None)
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    iters = [r["s_per_iter"] for r in log if r["event"] == "train"][1:]  # drop compile interval
    mems = [r["peak_mem_bytes"] for r in log if r["event"] == "train"]
    return {
        "pattern": pattern, "backend": args.backend, "dtype": args.dtype, "steps": state["step"],
        "val_bpb": val.bpd, "val_targets": val.targets, "val_full": not args.smoke,
        "s_per_iter_median": statistics.median(iters) if iters else None,
        "peak_mem_bytes": max(mems) if mems else None, "model_config": cfg.to_dict(),
        "train_config": json.loads(json.dumps(tcfg.__dict__)),
        "layout_density": [lay.token_density for lay in model.layouts],
    }


def write_table(rows, out: Path) -> None:
    lines = ["| attention | val bits/byte | s / iter | steps | paper bpb | paper s / iter |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        pb, ps = PAPER_TABLE2.get(r["pattern"], ("-", "-"))
        it = f"{r['s_per_iter_median']:.3f}" if r["s_per_iter_median"] is not None else "-"
        lines.append(f"| {r['pattern']} | {r['val_bpb']:.3f} | {it} | {r['steps']} | {pb} | {ps} |")
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
        axes[0].plot([x["step"] for x in ev], [x["bpd"] for x in ev], "o-", color=line.get_color(),
                     label=r["pattern"])
        axes[1].plot([x["time"] - t0 for x in ev], [x["bpd"] for x in ev], "o-",
                     color=line.get_color(), label=r["pattern"])
    axes[0].set(xlabel="step", ylabel="bits per byte", title="train (faint) and validation")
    axes[1].set(xlabel="wall-clock seconds", ylabel="validation bits per byte")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=130)
    plt.close(fig)


def run(args) -> int:
    """Train and evaluate each pattern into ``--out``; ValueError for bad options."""
    from stbench import environment
    from stbench.reference import data

    if args.smoke:
        smoke_settings(args)
    out = Path(args.out)
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    unknown = sorted(set(patterns) - set(PATTERNS))
    if unknown or not patterns:
        raise ValueError(f"--patterns: unknown {unknown}; choose from {','.join(PATTERNS)}")
    used = [p for p in patterns if (out / p / "log.jsonl").exists()] + (
        ["table2.jsonl"] if (out / "table2.jsonl").exists() else [])
    if used:
        raise ValueError(f"--out {out} already holds results ({', '.join(used)}): choose a "
                         "fresh folder")
    out.mkdir(parents=True, exist_ok=True)
    splits = data.load("pydoc" if args.smoke else "wiki", args.data_dir)
    env = environment.collect().to_dict()
    rows = []
    for pattern in patterns:
        t = time.perf_counter()
        row = {**run_pattern(args, pattern, splits, out), "env": env, "smoke": args.smoke,
               "wall_s": time.perf_counter() - t}
        rows.append(row)
        with open(out / "table2.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{pattern:8s} val {row['val_bpb']:.4f} bpb  {row['s_per_iter_median']} s/iter",
              flush=True)
    write_table(rows, out)
    plot_curves(rows, out)
    print((out / "table2.md").read_text())
    return 0
