"""``stbench model``: train, evaluate, sample and check the Sparse Transformer reference model.

    stbench model train  --preset tiny --out runs/tiny [--dataset pydoc] [--steps 200] [--resume]
    stbench model train  --preset text-8k --out runs/t8k --devices all [--micro-batch 2]
    torchrun --nproc-per-node 8 -m stbench model train --preset text-8k --out runs/t8k
    stbench model eval   --checkpoint runs/tiny/checkpoint.pt [--split test] [--backend triton]
    stbench model sample --checkpoint runs/tiny/checkpoint.pt --out runs/tiny/samples
    stbench model parity --preset tiny --backends dense,triton [--dtype bf16] [--json]
    stbench model table2 --out runs/table2 --data-dir DATA [--smoke]

Datasets come from the installed sources, or from a folder written by ``stbench data prepare``
(``--data-dir``). ``--set key=value`` replaces a field of the preset's ModelConfig
(``--set attention=fixed --set layers=4``). ``parity --json`` ends with one line
``{"bpd": {backend: value, ...}}``; its exit code is 1 when a backend misses the tolerance.

Under torchrun (or with ``--devices all|K``, which starts it) ``train`` runs data-parallel, one
GPU per process, with the same global ``--batch-size`` for any number of processes
(reference/parallel.py), and ``eval`` shards the split over the processes.
"""

from __future__ import annotations

import argparse
import json
import sys


def _friendly(func):
    """Run a subcommand; expected failures (missing data, bad files or values) print one line
    naming the problem and the fix, and exit with 2, instead of a traceback."""
    import functools

    @functools.wraps(func)
    def run(args) -> int:
        from stbench.backends import BackendUnavailable, UnknownBackend
        from stbench.reference.data import DataError, DataMissing

        try:
            return func(args)
        except (DataMissing, DataError, BackendUnavailable, UnknownBackend, FileNotFoundError,
                ValueError) as exc:
            print(f"stbench model: error: {exc}", file=sys.stderr)
            return 2

    return run


def _overrides(items) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item!r}: write key=value, for example --set layers=4")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a plain string such as attention=fixed
    return out


def _dataset_for(args, cfg, state=None) -> str:
    if args.dataset:
        return args.dataset
    if state is not None and state["train_config"].dataset:
        return state["train_config"].dataset
    if cfg.image_shape is not None:
        return "fashion_mnist"
    return "pydoc" if args.preset == "tiny" else "wiki"


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _progress(enabled: bool = True):
    """A progress bar (drawn only when ``enabled``: rank 0 of several)."""
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def _train(args) -> int:
    from stbench import distributed
    from stbench.reference import data, model, train

    if (code := distributed.launch_if_asked(args.devices, args.argv)) is not None:
        return code
    cfg = model.preset(args.preset, **_overrides(args.set))
    tcfg = train.TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        eval_every=args.eval_every, eval_batch_size=args.batch_size, eval_batches=args.eval_batches,
        log_every=args.log_every, seed=args.seed, dtype=args.dtype, backend=args.backend,
        dataset=_dataset_for(args, cfg),
    )
    splits = data.load(tcfg.dataset, args.data_dir)
    device = None if args.device == "auto" else args.device
    with distributed.process_group(device) as ranks:
        with _progress(ranks.is_main) as progress:
            last = train.train(cfg, tcfg, splits, args.out, ranks.device, args.resume, progress,
                               time_limit_s=60 * args.minutes if args.minutes else None,
                               ranks=ranks, micro_batch=args.micro_batch)
    if ranks.is_main:
        print(json.dumps(last))
    return 0


def _eval(args) -> int:
    from stbench import distributed
    from stbench.reference import bpd, data, train

    if (code := distributed.launch_if_asked(args.devices, args.argv)) is not None:
        return code
    with distributed.process_group(None if args.device == "auto" else args.device) as ranks:
        device = ranks.device
        m, state = train.model_from_checkpoint(args.checkpoint, args.backend, device)
        args.preset = None
        splits = data.load(_dataset_for(args, m.cfg, state), args.data_dir)
        seqs = train.sequences_for(m.cfg, splits[args.split])
        total = seqs.num_batches(args.batch_size)
        with _progress(ranks.is_main) as progress:
            task = progress.add_task(f"eval {args.split}", total=args.max_batches or total)
            res = bpd.evaluate(m, seqs, args.batch_size, device,
                               dtype=bpd.parse_dtype(args.dtype), max_batches=args.max_batches,
                               on_batch=lambda i, n: progress.update(task, completed=i),
                               ranks=ranks)
    if not ranks.is_main:
        return 0
    record = {"event": "eval", "checkpoint": str(args.checkpoint), "step": state["step"],
              "split": args.split, "backend": args.backend, "dtype": args.dtype, "bpd": res.bpd,
              "targets": res.targets, "full": args.max_batches is None}
    print(json.dumps(record))
    return 0


def _sample(args) -> int:
    from pathlib import Path

    from stbench.reference import data, train

    device = _device(args.device)
    m, state = train.model_from_checkpoint(args.checkpoint, args.backend, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if m.cfg.image_shape is None:
        prime = args.prime.encode("utf-8").decode("unicode_escape").encode("latin-1")
        texts = train.sample_text(m, prime, args.length, args.num, args.temperature, args.seed)
        path = out / "samples.txt"
        path.write_text("\n\n=====\n\n".join(t.decode("utf-8", errors="replace") for t in texts))
        print(path.read_text())
    else:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.preset = None
        images = data.load(_dataset_for(args, m.cfg, state), args.data_dir)["test"][: args.num]
        rows = images.shape[1] // 2
        done = train.complete_images(m, images, rows, args.temperature, args.seed)
        fig, axes = plt.subplots(2, len(images), figsize=(1.2 * len(images), 2.6), squeeze=False)
        for i in range(len(images)):
            for r, (img, title) in enumerate(((images[i], "original"), (done[i], "completed"))):
                axes[r, i].imshow(img[..., 0], cmap="gray", vmin=0, vmax=255)
                axes[r, i].axis("off")
                if i == 0:
                    axes[r, i].set_title(title, fontsize=7, loc="left")
        path = out / "completions.png"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        print(f"wrote {path} (top {rows} rows given, the rest sampled)")
    return 0


def _parity(args) -> int:
    import torch
    from rich.markup import escape
    from rich.table import Table

    from stbench.commands.tables import console
    from stbench.reference import bpd, data, model, train

    device = _device(args.device)
    dtype = bpd.parse_dtype(args.dtype)
    if args.checkpoint:
        m, state = train.model_from_checkpoint(args.checkpoint, "dense", device)
        args.preset = None
    else:
        cfg = model.preset(args.preset, **_overrides(args.set))
        torch.manual_seed(args.seed)
        m, state = model.SparseTransformer(cfg).to(device), None
    split = data.load(_dataset_for(args, m.cfg, state), args.data_dir)["validation"]
    batch = train.sequences_for(m.cfg, split).sample(
        args.batch_size, torch.Generator().manual_seed(args.seed)).to(device)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = bpd.parity(m, batch, backends, dtype)
    table = Table(title=f"bits-per-dim parity, {args.dtype}, tolerance "
                        f"{bpd.PARITY_BPD_TOL[dtype]:g} bpd, grad cos >= {bpd.PARITY_GRAD_COS}")
    for col in ("backend", "bpd", "|diff|", "grad cos", "ok"):
        table.add_column(col)
    for r in rows:
        if r.error:
            table.add_row(r.backend, "-", "-", "-", f"unavailable: {escape(r.error)}")
            continue
        ok = "reference" if r.ok is None else ("yes" if r.ok else "NO")
        table.add_row(r.backend, f"{r.bpd:.6f}", f"{r.bpd_diff:.2e}", f"{r.grad_cos:.6f}", ok)
    console().print(table)
    if args.json:
        print(json.dumps({"bpd": {r.backend: r.bpd for r in rows if r.bpd is not None}}))
    return 1 if any(r.ok is False for r in rows) else 0


def _common(p, checkpoint: bool, backend: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", required=True, help="checkpoint.pt from `model train`")
    p.add_argument("--dataset", default=None,
                   help="wiki, fashion_mnist or pydoc (default: from the model: tiny -> pydoc)")
    p.add_argument("--data-dir", default=None, help="folder from `stbench data prepare`")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    if backend:
        p.add_argument("--backend", default="dense", help="attention backend (default: dense)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--seed", type=int, default=0)


def _devices_option(p) -> None:
    p.add_argument("--devices", default=None, metavar="all|K",
                   help="run on K processes (all: every GPU) started with torchrun")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model", help="train / eval / sample / parity of the Sparse Transformer",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="actions", metavar="ACTION")
    from stbench.reference.model import PRESETS

    t = sub.add_parser("train", help="train a preset; checkpoints and log.jsonl under --out")
    t.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--eval-batches", type=int, default=None,
                   help="validation batches per evaluation (default: the whole split)")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    t.add_argument("--minutes", type=float, default=None,
                   help="wall-clock cap: stop (evaluated and checkpointed) after this long")
    t.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per forward pass on each process (gradient accumulation; "
                   "default: the process's whole share of --batch-size)")
    _devices_option(t)
    _common(t, checkpoint=False)
    t.set_defaults(func=_friendly(_train))

    e = sub.add_parser("eval", help="bits per dim of a checkpoint on a whole split")
    e.add_argument("--split", default="validation", choices=("validation", "test", "train"))
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-batches", type=int, default=None, help="truncate (quick looks only)")
    _devices_option(e)
    _common(e, checkpoint=True)
    e.set_defaults(func=_friendly(_eval))

    s = sub.add_parser("sample", help="text samples, or image completions (top half given)")
    s.add_argument("--out", required=True, help="folder for samples.txt / completions.png")
    s.add_argument("--num", type=int, default=4)
    s.add_argument("--length", type=int, default=512, help="text: bytes per sample")
    s.add_argument("--prime", default="\\n", help="text: the start (backslash escapes allowed)")
    s.add_argument("--temperature", type=float, default=1.0)
    _common(s, checkpoint=True)
    s.set_defaults(func=_friendly(_sample))

    q = sub.add_parser("parity", help="bpd and gradients of each backend against dense")
    q.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    q.add_argument("--checkpoint", default=None,
                   help="use trained weights instead of a seeded initialisation")
    q.add_argument("--backends", default="dense,triton",
                   help="comma-separated (default: %(default)s)")
    q.add_argument("--batch-size", type=int, default=2)
    q.add_argument("--json", action="store_true", help='end with one line {"bpd": {...}}')
    _common(q, checkpoint=False, backend=False)
    q.set_defaults(func=_friendly(_parity))
    from stbench.commands import model_table2

    model_table2.register(sub).set_defaults(func=_friendly(model_table2.run))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
