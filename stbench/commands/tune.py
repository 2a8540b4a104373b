"""``stbench tune``: autotune one problem (layout block granularity and backend configs), or
measure the tuner against exhaustive search.

    stbench tune --layout st_mix --n-ctx 16384                     # standard problem, cached
    stbench tune --layout causal --n-ctx 256 --batch 1 --heads 2 --head-dim 32 \\
        --dtype float32 --backends dense,sdpa --strategy exhaustive
    stbench tune --evaluate --out out/tune_eval --ns 4096,16384 --backends triton
    stbench tune --list                                             # what the cache holds
    stbench tune --layout causal --n-ctx 65536 --backends triton --rows ab.jsonl \\
        --configs null '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}'   # these, side by side
    stbench tune --layout causal --n-ctx 65536 --backends gluon,fa4 \\
        --configs null 'gluon:{"rows": 192}'             # a kernel config beside a peer
    stbench tune --export-picks reports/standard/h200 reports/standard-picks/h200 --gpu h200

The search starts from the best known configurations of each backend (``--no-seeds``: without
them): the local cache's pick and the shipped picks for this problem, the other mode's, and
those of the same layout at the neighbouring N (``tuning/seeds.py``).

``--export-picks SRC...`` writes the shipped tuned picks of ``--gpu`` (default file: the
package's ``stbench/tuning/shipped/GPU.json``, or ``--out FILE``) from results folders or
JSONL files, by the rule of ``tuning/export.py``; ``backend='auto'`` reads them when the local
cache has no entry.

``--configs`` measures exactly the configurations given (JSON; null: the backend's default) of
each backend, each checked against the dense reference first and then timed with the sweep's
timer, prints them side by side and appends one row per (backend, config) to ``--rows`` (the
result schema; failures are rows); it caches nothing unless ``--cache`` is given. An item
``BACKEND:JSON`` is measured for that backend alone, beside the plain items (a backend left
with none runs its default), so one command times a kernel's variants beside a peer.
"""

from __future__ import annotations

import argparse
import json

from stbench.commands import csv_list, json_value, out_folder, positive_ints, torch_device
from stbench.commands.tables import Column, Rows, add_format_option, console, emit, say


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
    p.add_argument("--device", type=torch_device, default=None,
                   help="cpu or cuda (default: cuda if present)")
    p.add_argument("--precompile-workers", type=int, default=0,
                   help="processes that compile each batch of candidates side by side before "
                   "it is timed (0: compile on first call)")
    p.add_argument("--evaluate", action="store_true",
                   help="the tuner (--strategy) against exhaustive search on standard problems, "
                   "into --out")
    p.add_argument("--out", default=None,
                   help="folder for --evaluate (tune_eval.jsonl); file for --export-picks")
    p.add_argument("--max-evals", type=int, default=None,
                   help="candidates measured per backend at most (default: as many as the "
                   "strategy wants)")
    p.add_argument("--no-seeds", action="store_true",
                   help="search without starting from the best known configurations")
    p.add_argument("--export-picks", nargs="+", default=None, metavar="SRC",
                   help="write the shipped tuned picks of --gpu from these results folders or "
                   "JSONL files, and exit")
    p.add_argument("--gpu", default=None,
                   help="with --export-picks: the GPU model whose rows count (e.g. h200)")
    p.add_argument("--ns", type=positive_ints, default=[4096, 16384],
                   help="N values for --evaluate (default 4096,16384)")
    p.add_argument("--layouts", type=csv_list,
                   default=["causal", "local", "strided", "fixed", "st_mix"],
                   help="layouts for --evaluate")
    p.add_argument("--list", action="store_true", help="print the cache's entries and exit")
    p.add_argument("--configs", nargs="+", type=config_arg, default=None,
                   metavar="[BACKEND:]JSON",
                   help="measure exactly these configs (null: the default) side by side instead "
                   "of tuning; BACKEND:JSON gives one backend a config of its own (the others "
                   "run the plain ones, or their default); not cached unless --cache is given")
    p.add_argument("--block", type=int, default=None,
                   help="with --configs: re-block the layout to this block first (exact)")
    add_format_option(p)
    p.set_defaults(func=run)


def _ms(x) -> str:
    return f"{x:.4g}"


def _config(c) -> str:
    return json.dumps(c, sort_keys=True)


PICK_COLUMNS = (Column("backend"), Column("block", right=True), Column("config", fmt=_config),
                Column("median_ms", "median ms", _ms, right=True))


def run(args) -> int:
    from stbench import problems
    from stbench.tuning import autotune, cache

    con = console(stderr=True)
    if args.max_evals is not None and args.max_evals < 1:
        raise ValueError(f"--max-evals {args.max_evals}: use a positive count")
    if args.export_picks:
        return _export(args, con)
    if args.list:
        return _list(cache, args)
    if args.evaluate:
        return _evaluate(args)
    prob = problems.Problem(_spec(args.layout), args.n_ctx,
                            args.batch or problems.batch_for(args.n_ctx), args.heads,
                            args.head_dim, args.dtype, args.mode)
    if args.configs is not None:
        return _compare(autotune, prob, args, con)
    if args.block is not None:
        raise ValueError("--block goes with --configs (tuning searches every block itself)")
    res = _tune_one(autotune, prob, args)
    say(con, f"{prob.label()}: {res.evaluated} of {res.candidates} candidates evaluated in "
        f"{res.seconds:.1f} s")
    emit(Rows(f"{prob.label()}: each backend's best", PICK_COLUMNS,
              tuple(vars(p) for p in res.per_backend.values())), args.format, args.width)
    if res.best is None:
        say(con, "no valid candidate", style="yellow")
        return 1
    say(con, f"pick: {res.best.backend} block {res.best.block} {json.dumps(res.best.config)}"
        f" ({res.best.median_ms:.4g} ms), cached in {args.cache or cache.default_path()}")
    return 0


def _list(cache, args) -> int:
    """``--list``: the cache's entries, one row each."""
    data = cache.load(args.cache)
    rows = [dict(e, layout_hash=e["layout_hash"][:10]) for e in data["entries"].values()]
    keys = ("n_ctx", "heads", "batch", "head_dim", "dtype", "mode", "layout_hash",
            "layout_block", "backend", "block", "config", "median_ms")
    headers = {"n_ctx": "N", "heads": "H", "batch": "B", "head_dim": "D", "layout_hash": "layout",
               "layout_block": "layout block", "median_ms": "median ms"}
    fmts = {"config": _config, "median_ms": _ms}
    emit(Rows(f"{len(rows)} entries in {args.cache or cache.default_path()}",
              tuple(Column(k, headers.get(k), fmts.get(k, str)) for k in keys), tuple(rows)),
         args.format, args.width)
    return 0


def _evaluate(args) -> int:
    """``--evaluate``: the tuner against exhaustive search, one row per problem."""
    from pathlib import Path

    from stbench import problems
    from stbench.tuning import evaluate

    if not args.out:
        raise ValueError("--evaluate needs --out DIR")
    out_folder("--out", args.out)
    probs = [problems.Problem(_spec(name), n, args.batch or problems.batch_for(n), args.heads,
                              args.head_dim, args.dtype, args.mode)
             for n in args.ns for name in args.layouts]
    recs = evaluate.evaluate(probs, args.backends, device=args.device or _dev(),
                             out_dir=args.out, strategy=args.strategy,
                             cache_path=args.cache or Path(args.out) / "tune.json",
                             max_evals=args.max_evals, seeded=not args.no_seeds)
    f3, f1 = (lambda x: f"{x:.3f}"), (lambda x: f"{x:.1f}")
    emit(Rows("the tuner against exhaustive search",
              (Column("problem"), Column("status"),
               Column("ratio", "pick / best", f3, right=True),
               Column("tune_s", "tune s", f1, right=True),
               Column("exhaustive_s", "exhaustive s", f1, right=True),
               Column("lookup_warm_ms", "cached lookup ms", f3, right=True)), tuple(recs)),
         args.format, args.width)
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
                             cache_path=args.cache, rows_path=args.rows, precompiler=pre,
                             max_evals=args.max_evals, seeds=None if not args.no_seeds else {})
    finally:
        if pre is not None:
            pre.close()


COMPARE_COLUMNS = (
    Column("backend"), Column("config", fmt=_config), Column("status"),
    Column("median_ms", "median ms", _ms, right=True),
    Column("p20_ms", "p20 ms", _ms, right=True), Column("p80_ms", "p80 ms", _ms, right=True),
    Column("tflops", "TFLOP/s", lambda x: f"{x:.1f}", right=True),
    Column("err", fmt=lambda x: f"{x:.2e}", right=True),
    Column("tol", fmt=lambda x: f"{x:.2e}", right=True), Column("check"), Column("error"),
)


def _export(args, con) -> int:
    """``--export-picks``: the shipped picks file of ``--gpu`` from the given results."""
    from stbench.tuning import export, shipped

    if not args.gpu:
        raise ValueError("--export-picks needs --gpu MODEL (e.g. h200, the <gpu> of "
                         "reports/<suite>/<gpu>/)")
    command = f"stbench tune --export-picks {' '.join(args.export_picks)} --gpu {args.gpu}"
    data, notes = export.export_picks(args.export_picks, args.gpu, command)
    path = export.write(data, args.out or shipped.path_for(args.gpu))
    for note in notes:
        say(con, note)
    say(con, f"{len(data['problems'])} problems, "
        f"{sum(len(p['picks']) for p in data['problems'])} picks written to {path}")
    return 0 if data["problems"] else 1


def _compare(autotune, prob, args, con) -> int:
    """``--configs``: each backend at each given config, checked then timed; 1 if none is ok."""
    from dataclasses import asdict

    from stbench import results
    from stbench.tuning.measure import BenchSettings

    configs = _configs_by_backend(args.configs, args.backends)
    layout = prob.build_layout()
    block = args.block or layout.block
    layout = layout.reblock(block)  # LayoutError (a ValueError) names a block it cannot take
    res = autotune.tune(prob, args.backends, device=args.device or _dev(),
                        strategy="exhaustive", settings=BenchSettings(),
                        layout=layout, blocks=(block,), configs=configs, save=bool(args.cache),
                        cache_path=args.cache)
    last = {}
    for row in res.rows:  # the re-timed rows come last and replace the search's
        last[(row.backend, row.block, json.dumps(row.config, sort_keys=True))] = row
    emit(Rows(f"{prob.label()} at block {block}", COMPARE_COLUMNS,
              tuple(asdict(r) for r in last.values())), args.format, args.width)
    if args.rows:
        results.append_rows(args.rows, list(last.values()))
        say(con, f"{len(last)} rows appended to {args.rows}")
    return 0 if any(r.status == "ok" for r in last.values()) else 1


def config_arg(text: str):
    """``--configs`` item: (backend or None, JSON value): ``JSON`` for every backend, or
    ``BACKEND:JSON`` for one (``gluon:{"rows": 192}``), for argparse ``type=``."""
    import argparse

    try:
        return None, json.loads(text)
    except json.JSONDecodeError:
        pass
    name, sep, rest = text.partition(":")
    if sep and name.isidentifier():
        return name, json_value(rest)
    raise argparse.ArgumentTypeError(f"{text!r} is not JSON nor BACKEND:JSON: write e.g. "
                                     "'{\"BLOCK_M\": 64}', null or 'gluon:{\"rows\": 192}'")


def _configs_by_backend(items, names) -> list | dict:
    """The ``--configs`` items as ``autotune.tune`` takes them: a list of dicts for every
    backend, or where an item names a backend, {backend: the plain configs and its own,
    None: the plain configs (or the default alone)}. ValueError on a config that is not an
    object or null, or a backend that is not registered or not in ``--backends``."""
    from stbench import backends

    out = []
    for name, cfg in items:
        cfg = {} if cfg is None else cfg
        if not isinstance(cfg, dict):
            raise ValueError(f"--configs {cfg!r}: each config is a JSON object or null")
        if name is not None and name not in backends.names():
            raise ValueError(f"--configs {name}:...: no backend {name!r}: use one of "
                             f"{', '.join(backends.names())}")
        if name is not None and names and name not in names:
            raise ValueError(f"--configs {name}:...: {name!r} is not in --backends "
                             f"{','.join(names)}: add it there")
        out.append((name, cfg))
    plain = [c for name, c in out if name is None]
    named = {}
    for name, cfg in out:
        if name is not None:
            named.setdefault(name, list(plain)).append(cfg)
    return {None: plain or [{}], **named} if named else plain


def _spec(name: str):
    """The named spec, built at the largest block that fits when its own does not."""
    from dataclasses import replace

    from stbench import problems

    return replace(problems.layout_spec(name), fit_block=True)


def _dev() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
