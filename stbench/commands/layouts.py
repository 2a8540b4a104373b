"""``stbench layouts``: list the layout generators; show one as a density table and pictures;
time layout and plan building at large N.

    stbench layouts list
    stbench layouts show fixed --n-ctx 1024 --stride 128 --heads 4 --out pictures/
    stbench layouts bench --out plan_bench.jsonl           # N = 2^20, blocks 16 and 128
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Callable

from stbench.commands import csv_list, fail, out_folder
from stbench.commands.tables import Column, Rows, add_format_option, emit

# Generators of stbench.layouts a user builds by name, in listing order (absent ones skipped).
GENERATOR_NAMES = (
    "causal", "local", "strided", "merged_strided", "fixed", "st_mix", "sliding_window",
    "longformer", "bigbird", "variable",
)
TABLE_BLOCKS = (16, 32, 64, 128)
SKIP_PARAMS = ("n_ctx", "block")  # given by --n-ctx and the block of each table row
# Options of `show` mapped to generator keyword arguments (only those given are passed).
OPTION_PARAMS = ("heads", "stride", "window", "num_verts", "vertsize", "seed")


def generators() -> dict[str, Callable]:
    """name -> generator function, for the names of GENERATOR_NAMES that stbench.layouts has."""
    from stbench import layouts

    return {n: getattr(layouts, n) for n in GENERATOR_NAMES if callable(getattr(layouts, n, None))}


def generator_params(fn: Callable) -> list[inspect.Parameter]:
    """The keyword parameters a user may set (everything but n_ctx and block)."""
    return [p for n, p in inspect.signature(fn).parameters.items() if n not in SKIP_PARAMS]


def build_layout(name: str, n_ctx: int, block: int, params: dict):
    """``stbench.layouts.<name>(n_ctx, block=block, **params)``; a ValueError names the generator
    and the parameters it accepts when one is unknown."""
    gens = generators()
    if name not in gens:
        raise ValueError(f"unknown layout {name!r}: choose one of {', '.join(gens)}")
    fn = gens[name]
    accepted = [p.name for p in generator_params(fn)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"layout {name!r} has no parameter {', '.join(unknown)}: it accepts "
            f"{', '.join(accepted) or 'none besides n_ctx and block'}"
        )
    return fn(n_ctx, block=block, **params)


def parse_param(text: str) -> tuple[str, object]:
    """'key=value' -> (key, value): value as int, float, true/false, a comma list, or text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r}: write KEY=VALUE, e.g. --param seed=0")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), _value(value.strip())


def _value(v: str):
    if "," in v:
        return [_value(x) for x in v.split(",") if x]
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def first_sentence(doc: str) -> str:
    """The docstring's first sentence, on one line."""
    para = " ".join(doc.split("\n\n")[0].split())
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


def layout_params(args) -> dict:
    """The generator keyword arguments given on the command line."""
    params = {k: getattr(args, k) for k in OPTION_PARAMS if getattr(args, k, None) is not None}
    params.update(dict(args.param or ()))
    return params


def density_rows(name: str, n_ctx: int, params: dict, blocks=TABLE_BLOCKS) -> list[dict]:
    """One row per block: nnz, densities, partial blocks, plan bytes, or the error that stops it."""
    from stbench.layouts import PARTIAL, LayoutError, plan_for

    rows = []
    for b in blocks:
        try:
            lay = build_layout(name, n_ctx, b, params)
        except LayoutError as exc:
            rows.append(dict(block=b, error=str(exc)))
            continue
        rows.append(dict(
            block=b, nnz=lay.nnz, block_density=lay.block_density,
            token_density=lay.token_density, partial_blocks=int((lay.kinds == PARTIAL).sum()),
            plan_bytes=plan_for(lay).nbytes, permuted=lay.perms is not None, layout=lay,
        ))
    return rows


def picture_layout(name: str, n_ctx: int, block: int, params: dict, built: list[dict]):
    """The layout to draw: at ``block`` if it builds, else the first block of the table that did
    (saying so), else None."""
    from stbench.layouts import LayoutError

    for r in built:
        if r["block"] == block:
            return r["layout"]
    try:
        return build_layout(name, n_ctx, block, params)
    except LayoutError as exc:
        if not built:
            return None
        print(f"note: block {block} does not build ({exc}); pictures at block "
              f"{built[0]['block']}", file=sys.stderr)
        return built[0]["layout"]


# ------------------------------------------------------------------------------ commands
def cmd_list(args) -> int:
    rows = []
    for name, fn in generators().items():
        params = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in generator_params(fn)
        )
        rows.append(dict(name=name, parameters=params,
                         description=first_sentence(inspect.getdoc(fn) or "")))
    emit(Rows("stbench.layouts generators (stbench layouts show NAME --help)",
              (Column("name"), Column("parameters", "parameters (besides n_ctx, block)"),
               Column("description", "what it is")), tuple(rows)), args.format, args.width)
    return 0


def _yes(flag) -> str:
    return "yes (strided transpose)" if flag else ""


def _human_bytes(x) -> str:
    from stbench.memory import human_bytes

    return human_bytes(x)


DENSITY_COLUMNS = (
    Column("block", right=True), Column("nnz", right=True),
    Column("block_density", "block density", lambda x: f"{x:.4g}", right=True),
    Column("token_density", "token density", lambda x: f"{x:.4g}", right=True),
    Column("partial_blocks", "partial blocks", right=True),
    Column("plan_bytes", "plan bytes", _human_bytes, right=True),
    Column("permuted", fmt=_yes), Column("error"),
)


def cmd_show(args) -> int:
    from stbench.layouts.pictures import save_layout_pictures, save_query_picture

    out_folder("--out", args.out)
    params = layout_params(args)
    try:
        rows = density_rows(args.name, args.n_ctx, params, args.blocks)
    except TypeError as exc:  # a parameter of the wrong type, e.g. --param window=abc
        raise ValueError(f"layout {args.name!r}: {exc}") from None
    built = [r for r in rows if "error" not in r]
    given = ", ".join(f"{k}={v}" for k, v in params.items())
    emit(Rows(f"{args.name}({given}) at N={args.n_ctx}", DENSITY_COLUMNS,
              tuple({k: v for k, v in r.items() if k != "layout"} for r in rows)),
         args.format, args.width)
    if args.out is None:
        return 0 if built else 1
    lay = picture_layout(args.name, args.n_ctx, args.block, params, built)
    if lay is None:
        return fail("layouts show", f"no block size builds {args.name!r}; no pictures written")
    paths = save_layout_pictures(lay, args.out, per_head=not args.no_per_head)
    width = args.width_tokens or params.get("stride") or params.get("window")
    if isinstance(width, int) and not 0 < width <= lay.n_ctx:
        width = None
    paths.append(save_query_picture(
        lay, f"{args.out}/{paths[0].name.replace('_heads.png', '_query.png')}", args.query,
        width if isinstance(width, int) else None,
    ))
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


MB = 1e6


def _mb(digits: int):
    return lambda x: f"{x / MB:.{digits}f}"


BENCH_COLUMNS = (
    Column("layout"), Column("block", right=True),
    Column("nnz", fmt=lambda x: f"{x:,}", right=True),
    Column("patterns", right=True),
    Column("plan_entries", "plan entries", lambda x: f"{x:,}", right=True),
    Column("gen_s", "gen s", lambda x: f"{x:.2f}", right=True),
    Column("hash_s", "hash s", lambda x: f"{x:.2f}", right=True),
    Column("plan_s", "plan s", lambda x: f"{x:.2f}", right=True),
    Column("plan_bytes", "plan MB", _mb(1), right=True),
    Column("layout_bytes", "layout MB", _mb(1), right=True),
    Column("peak_rss_bytes", "peak MB", _mb(0), right=True),
    Column("error"),
)


def cmd_bench(args) -> int:
    from stbench import plan_bench

    if min(args.n_ctx, args.heads, args.stride, args.repeat) <= 0:
        return fail("layouts bench", "--n-ctx, --heads, --stride and --repeat must be positive")
    gens = generators()
    unknown = [n for n in args.layouts if n not in gens]
    if unknown:
        return fail("layouts bench", f"unknown layouts {unknown}: choose from {', '.join(gens)}")
    rows = []
    for row in plan_bench.run(args.layouts, args.n_ctx, args.blocks, args.stride, args.heads,
                              args.repeat):
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    emit(Rows(f"layouts and plans at N={args.n_ctx}, H={args.heads}, stride {args.stride} "
              f"(median of {args.repeat})", BENCH_COLUMNS, tuple(rows)), args.format, args.width)
    print(f"rows appended to {args.out}", file=sys.stderr)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


# ------------------------------------------------------------------------------ parser
def _blocks(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks {text!r}: give block sizes like 16,32,64,128")
    if not out:
        raise argparse.ArgumentTypeError("--blocks: give at least one block size")
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "layouts", help="list layout generators; show one as a density table and pictures",
        description="List the attention-pattern generators, or show one: its density at blocks "
        "16..128 and per-head PNG pictures like the Sparse Transformer's pattern figures.",
    )
    sub = p.add_subparsers(title="actions", metavar="ACTION")
    lst = sub.add_parser("list", help="the generators and their parameters, one line each")
    add_format_option(lst)
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser(
        "show", help="density table at blocks 16..128 and per-head pictures of one layout",
        description="Build layout NAME at each block size, print nnz, block and token density, "
        "partial blocks and device-plan bytes, and (with --out) write per-head PNG pictures "
        "and one query's allowed keys. Generator parameters not given keep their defaults.",
    )
    show.add_argument("name", help="generator name (see `stbench layouts list`)")
    show.add_argument("--n-ctx", type=int, required=True, help="sequence length N (tokens)")
    show.add_argument("--heads", type=int, default=None,
                      help="attention heads H (default: the generator's)")
    show.add_argument("--stride", type=int, default=None,
                      help="pattern stride l (strided, merged_strided, fixed)")
    show.add_argument("--window", type=int, default=None, help="local window in tokens (local)")
    show.add_argument("--num-verts", type=int, default=None,
                      help="fixed: distinct summary-column sets, cycled over heads")
    show.add_argument("--vertsize", type=int, default=None,
                      help="fixed: summary width in blocks (c = vertsize * block tokens)")
    show.add_argument("--seed", type=int, default=None, help="seed of random patterns (bigbird)")
    show.add_argument("--param", action="append", type=parse_param, metavar="KEY=VALUE",
                      help="any other generator parameter, e.g. --param num_random_blocks=2")
    show.add_argument("--blocks", type=_blocks, default=list(TABLE_BLOCKS),
                      help="block sizes of the table, comma-separated (default: 16,32,64,128)")
    show.add_argument("--block", type=int, default=32,
                      help="block size of the layout drawn (default: 32; fixed's c depends on it)")
    show.add_argument("--out", default=None,
                      help="folder for the PNG pictures (none written without it)")
    show.add_argument("--query", type=int, default=None,
                      help="query token of the allowed-keys picture (default: last row's middle)")
    show.add_argument("--width-tokens", type=int, default=None,
                      help="tokens per row in the allowed-keys picture (default: the stride)")
    show.add_argument("--no-per-head", action="store_true",
                      help="write only the overview picture, not one PNG per head")
    add_format_option(show, json_alias=True)
    show.set_defaults(func=cmd_show)

    bench = sub.add_parser(
        "bench", help="time layout generation, hashing and plan building at large N (CPU)",
        description="Build each layout at each block, each in a fresh process, and time the "
        "generator, the content hash and the device plan; record the bytes of the layout and "
        "the plan and the process's peak memory. One JSON line per configuration is appended "
        "to --out (stbench.plan_bench).",
    )
    bench.add_argument("--out", required=True, help="JSONL file the rows are appended to")
    bench.add_argument("--layouts", type=csv_list,
                       default=["fixed", "merged_strided"],
                       help="comma-separated generators (default: fixed,merged_strided)")
    bench.add_argument("--n-ctx", type=int, default=1 << 20, help="sequence length N (2^20)")
    bench.add_argument("--heads", type=int, default=8, help="attention heads H (default 8)")
    bench.add_argument("--stride", type=int, default=1024,
                       help="stride l, the window of local generators (default 1024 = sqrt(N))")
    bench.add_argument("--blocks", type=_blocks, default=[16, 128],
                       help="block sizes, comma-separated (default: 16,128)")
    bench.add_argument("--repeat", type=int, default=3, help="builds per configuration (median)")
    add_format_option(bench)
    bench.set_defaults(func=cmd_bench)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
