"""``stbench memory``: attention memory, dense (stored or recomputed) against block-sparse.

    stbench memory --seed-table                  # the Sparse Transformer's table, + sparse columns
    stbench memory --n-ctx 4096,16384 --layout fixed --block 32 --heads 8 --layers 64
"""

from __future__ import annotations

import argparse
import json
import math

from stbench.commands import positive_ints
from stbench.commands.tables import Column, Rows, add_format_option, emit

DEFAULT_N = (1024, 4096, 16384, 65536)
DTYPES = ("float32", "bfloat16", "float16", "float64")


def standard_stride(n_ctx: int) -> int:
    """The standard problem's stride (stbench.problems): max(128, 2^round(log2(sqrt(N))))."""
    return max(128, 2 ** round(math.log2(math.sqrt(n_ctx))))


# ------------------------------------------------------------------------------ seed table
def seed_table_rows() -> list[dict]:
    """JSON-ready rows of ``stbench.memory.seed_table()`` (sparse keys as 'pattern@block')."""
    from stbench.memory import seed_table

    rows = []
    for r in seed_table():
        r = dict(r)
        r["sparse"] = {f"{p}@{b}": v for (p, b), v in r["sparse"].items()}
        rows.append(r)
    return rows


def _bytes(x) -> str:
    from stbench.memory import human_bytes

    return human_bytes(x) if x else "-"


def cmd_seed_table(args) -> int:
    from stbench.memory import (
        PAPER_HEADS, PAPER_LAYERS, SEED_BLOCKS, SEED_PATTERNS, SEED_ROWS, SEED_STRIDE,
    )

    rows = seed_table_rows()
    if args.format == "json":  # the rows as stbench.memory gives them (sparse as a dict)
        print(json.dumps(rows, indent=1))
        return 0
    flat = []
    for spec, r in zip(SEED_ROWS, rows):
        star_s = "*" if spec.stored_rounding == "nearest" else ""
        star_r = "*" if spec.recomputed_rounding == "nearest" else ""
        flat.append(dict(
            data=r["label"], n_ctx=r["n_ctx"], stored=r["stored"],
            stored_model=r["stored_model"] + star_s, recomputed=r["recomputed"] or None,
            recomputed_model=r["recomputed_model"] + star_r, lse_bytes=r["lse_bytes"],
            **{f"{p}@{b}": r["sparse"][f"{p}@{b}"] for p in SEED_PATTERNS for b in SEED_BLOCKS},
        ))
    columns = (
        Column("data"), Column("n_ctx", "N", right=True),
        Column("stored", "stored paper", right=True),
        Column("stored_model", "stored model", right=True),
        Column("recomputed", "recomp. paper", right=True),
        Column("recomputed_model", "recomp. model", right=True),
        *(Column(f"{p}@{b}", f"{p} b{b}", _bytes, right=True)
          for p in SEED_PATTERNS for b in SEED_BLOCKS),
        Column("lse_bytes", "flash", _bytes, right=True),
    )
    emit(Rows(
        f"Attention memory of a {PAPER_LAYERS}-layer, {PAPER_HEADS}-head model, float32 "
        "weights (Child et al. 2019)", columns, tuple(flat),
        caption="paper: as printed; model: N^2*H*L*4 bytes stored, N^2*H*4 recomputed, read to "
        "4 significant figures and cut to the printed digits (* rounded to nearest, as the "
        "paper printed it). Sparse columns: non-empty blocks x b^2 x 4 B x 64 layers, "
        f"l={SEED_STRIDE}; strided = local(l) or (q-k)%l==0; fixed c=32. flash: LSE only, "
        "N*H*4 B per layer. -: block does not divide N.",
    ), args.format, args.width)
    return 0


# ------------------------------------------------------------------------------ per-N table
def memory_rows(args) -> list[dict]:
    """One dict per N of the bytes each model gives (see ``stbench.memory``)."""
    import torch

    from stbench import memory as M
    from stbench.commands.layouts import build_layout, layout_params

    dtype = getattr(torch, args.dtype)
    e = M.itemsize(dtype)
    rows = []
    for n in args.n_ctx:
        row = dict(
            n_ctx=n, heads=args.heads, layers=args.layers, dtype=args.dtype,
            dense_stored=M.attention_matrix_bytes(n, args.heads, args.layers, e),
            dense_recomputed=M.attention_matrix_bytes(n, args.heads, args.layers, e, True),
            flash_lse=M.lse_bytes(n, args.heads, args.layers, args.batch),
            dense_ref_fwd_bwd=M.dense_memory_bytes(
                n, args.heads, args.batch, dtype, "fwd+bwd", head_dim=args.head_dim),
            dense_ref_chunked_fwd_bwd=M.dense_memory_bytes(
                n, args.heads, args.batch, dtype, "fwd+bwd", chunked=True, head_dim=args.head_dim),
        )
        if args.layout:
            params = layout_params(args)
            params.setdefault("heads", args.heads)
            if "stride" not in params and args.layout in ("strided", "merged_strided", "fixed"):
                params["stride"] = standard_stride(n)
            try:
                lay = build_layout(args.layout, n, args.block, params)
            except (ValueError, TypeError) as exc:
                row["layout_error"] = str(exc)
            else:
                row.update(
                    layout=lay.name, block=lay.block, block_density=lay.block_density,
                    sparse_stored=M.sparse_attention_bytes(lay, args.layers, e),
                    sparse_exact=M.sparse_attention_bytes(lay, args.layers, e, exact=True),
                    kernel_fwd=M.kernel_memory_bytes(lay, args.batch, args.head_dim, dtype, "fwd"),
                    kernel_fwd_bwd=M.kernel_memory_bytes(
                        lay, args.batch, args.head_dim, dtype, "fwd+bwd"),
                )
        rows.append(row)
    return rows


COLUMNS = (  # (key, header)
    ("dense_stored", "dense stored"),
    ("dense_recomputed", "dense recomputed"),
    ("sparse_stored", "sparse stored (blocks)"),
    ("sparse_exact", "sparse stored (pairs)"),
    ("flash_lse", "flash (LSE)"),
    ("kernel_fwd_bwd", "our kernel fwd+bwd"),
    ("dense_ref_fwd_bwd", "dense ref fwd+bwd"),
    ("dense_ref_chunked_fwd_bwd", "chunked ref fwd+bwd"),
)


def cmd_memory(args) -> int:
    if args.seed_table:
        return cmd_seed_table(args)
    rows = memory_rows(args)
    title = (f"Attention memory: H={args.heads}, L={args.layers} layers, {args.dtype}; one call: "
             f"B={args.batch}, D={args.head_dim}")
    if args.layout:
        title += f"; layout {args.layout} at block {args.block}"
    columns = [Column("n_ctx", "N", right=True)]
    if args.layout:
        columns += [Column("layout"), Column("layout_error", "error")]
    columns += [Column(k, h, _bytes, right=True) for k, h in COLUMNS
                if args.layout or not k.startswith(("sparse", "kernel"))]
    if args.format == "json":  # every field of the rows, as stbench.memory gives them
        print(json.dumps(rows, indent=1))
    else:
        emit(Rows(title, tuple(columns), tuple(rows), caption=(
            "stored: weights of all layers kept for backward; recomputed: one layer's; flash: LSE "
            "only (all layers); kernel / ref: peak of one attention call incl. q,k,v,o and grads "
            "(stbench/memory.py).")), args.format, args.width)
    return 1 if any("layout_error" in r for r in rows) else 0


# ------------------------------------------------------------------------------ parser
def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return v


def register(subparsers) -> None:
    from stbench.commands.layouts import parse_param

    p = subparsers.add_parser(
        "memory", help="attention memory: dense stored / recomputed against block-sparse",
        description="Attention memory per model (stored weights of every layer, recomputed "
        "one-layer weights, block-sparse layouts, flash-style LSE) and per attention call (our "
        "kernels, the dense reference). --seed-table reproduces the Sparse Transformer's table.",
    )
    p.add_argument("--seed-table", action="store_true",
                   help="the paper's table (64 layers, 4 heads) with block-sparse columns; "
                   "ignores the other model options")
    p.add_argument("--n-ctx", type=positive_ints, default=list(DEFAULT_N),
                   help="sequence lengths, comma-separated (default: 1024,4096,16384,65536)")
    p.add_argument("--heads", type=_positive, default=8,
                   help="attention heads H (default: %(default)s)")
    p.add_argument("--layers", type=_positive, default=1,
                   help="layers L of the model (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the attention weights and of q, k, v (default: %(default)s)")
    p.add_argument("--layout", default=None,
                   help="a generator of `stbench layouts list` for the sparse columns")
    p.add_argument("--block", type=_positive, default=32,
                   help="block size of --layout (default: %(default)s)")
    p.add_argument("--stride", type=_positive, default=None,
                   help="stride l of --layout (default max(128, 2^round(log2(sqrt(N)))))")
    p.add_argument("--window", type=_positive, default=None, help="window of --layout local")
    p.add_argument("--param", action="append", type=parse_param, metavar="KEY=VALUE",
                   help="any other parameter of --layout")
    p.add_argument("--batch", type=_positive, default=1,
                   help="batch B of one attention call (default: %(default)s)")
    p.add_argument("--head-dim", type=_positive, default=64,
                   help="head dim D of one call (default: %(default)s)")
    add_format_option(p, json_alias=True)
    p.set_defaults(func=cmd_memory)
