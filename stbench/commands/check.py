"""``stbench check``: every available backend against the dense reference, on random layouts.

    stbench check                                   # CPU default: well under a minute
    stbench check --backends triton,flex --dtypes bfloat16,float16 --n-ctx 1024 --heads 4
    stbench check --json > check.jsonl              # the table on stderr, one JSON row per line

For each layout of the shared conformance set (``stbench.layouts.cases``: every generator
family, random token masks with empty rows, one carrying a token permutation, a layout with no
allowed pair), built at --n-ctx and --block, and each dtype, q, k, v ~ N(0, 1) and an
upstream gradient dO are drawn from ``--seed``; the float64 reference (the plain masked softmax
when the scores fit in 64 MB, else the chunked reference) and the reference in the same dtype
give each backend's tolerance by ``stbench.accuracy``'s rule:

    err(out, ref64) <= 2 * err(ref_T, ref64) + floor[T]      (also for dq, dk, dv)

A backend that cannot run a layout or dtype here is listed as skipped with its reason. The
exit code is 1 when any row fails (too wrong, or an error), else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass

from stbench.commands import block_problem, json_value, torch_device
from stbench.commands.tables import Column, Rows, add_format_option, console, emit, say

DEFAULTS = {"n_ctx": 256, "heads": 2, "batch": 1, "head_dim": 32, "block": 16}
PLAIN_REFERENCE_BYTES = 64 * 2**20  # use the plain fp64 reference when B*H*N*N*8 fits
DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CheckRow:
    """One backend x layout x dtype result (errors are relative, see stbench.accuracy)."""

    backend: str
    layout: str
    dtype: str
    n_ctx: int
    heads: int
    block: int
    status: str  # ok | incorrect | error | unsupported
    fwd_err: float | None = None
    fwd_tol: float | None = None
    grad_err: float | None = None  # the worst of dq, dk, dv
    grad_tol: float | None = None  # the tolerance of that worst one
    message: str = ""


# ------------------------------------------------------------------------------ checking
def dense_reference(q, k, v, layout, scale, do):
    """(out, (dq, dk, dv)) of the dense reference in q's dtype; the plain one when small."""
    import torch

    from stbench.reference import dense

    b, h, n, _ = q.shape
    small = q.dtype == torch.float64 and b * h * n * n * 8 <= PLAIN_REFERENCE_BYTES
    fn = dense.dense_attention_reference if small else dense.attention
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, layout, scale)
    return out.detach(), torch.autograd.grad(out, (q, k, v), do)


def check_one(name, layout_name, layout, dtype, inputs64, refs64, refs_t, device,
              config=None) -> CheckRow:
    """Run backend ``name`` (with ``config``; None: its default) on one layout and dtype and
    judge it against ``refs64`` (the float64 reference's (out, grads)) and ``refs_t`` (the
    reference's in ``dtype``)."""
    import torch

    import stbench
    from stbench import accuracy, backends

    q64, k64, v64, do64 = inputs64
    b, h, n, d = q64.shape
    base = dict(backend=name, layout=layout_name, dtype=str(dtype).removeprefix("torch."),
                n_ctx=n, heads=h, block=layout.block)
    why = backends.unavailable_reason(name, device, dtype, layout)
    if why is not None:
        return CheckRow(**base, status="unsupported", message=why)
    scale = 1.0 / math.sqrt(d)
    q, k, v, do = (t.to(dtype) for t in inputs64)
    ref_out, ref_grads = refs_t
    out64, grads64 = refs64
    try:
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        out = stbench.attention(qg, kg, vg, layout, backend=name, scale=scale, config=config)
        ok, fwd_err, fwd_tol = accuracy.within(out, out64, ref_out, dtype)
        grad_err = grad_tol = None
        if backends.info(name).backward:
            grads = torch.autograd.grad(out, (qg, kg, vg), do)
            worst = -1.0
            for g, g64, g_ref in zip(grads, grads64, ref_grads):
                g_ok, err, tol = accuracy.within(g, g64, g_ref, dtype)
                ok = ok and g_ok
                ratio = err / tol if tol > 0 else math.inf
                if ratio > worst:
                    worst, grad_err, grad_tol = ratio, err, tol
    except backends.BackendUnavailable as exc:  # refused for these inputs (head dim, block)
        return CheckRow(**base, status="unsupported", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing backend is a row, not a crash
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return CheckRow(**base, status="error", message=msg)
    return CheckRow(**base, status="ok" if ok else "incorrect", fwd_err=fwd_err,
                    fwd_tol=fwd_tol, grad_err=grad_err, grad_tol=grad_tol)


def run_checks(backend_names, dtypes, n_ctx, heads, batch, head_dim, block, seed, device,
               only_layouts=None, progress=None, config=None) -> list[CheckRow]:
    """Every backend x layout x dtype; rows in that order (see CheckRow). ``config``: one
    backend configuration given to every backend (None: each one's default)."""
    import torch

    from stbench.layouts import cases

    rows = []
    for lname, layout in cases.build_all(n_ctx, heads, block, seed):
        if only_layouts and lname not in only_layouts:
            continue
        if isinstance(layout, str):
            rows.append(CheckRow("-", lname, "-", n_ctx, heads, block, "error",
                                 message=f"layout not built: {layout}"))
            continue
        gen = torch.Generator().manual_seed(seed * 1000003 + zlib.crc32(lname.encode()))
        shape = (batch, heads, n_ctx, head_dim)
        inputs64 = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)
                    for _ in range(4)]
        scale = 1.0 / math.sqrt(head_dim)
        refs64 = dense_reference(*inputs64[:3], layout, scale, inputs64[3])
        for dtype in dtypes:
            refs_t = dense_reference(*(t.to(dtype) for t in inputs64[:3]), layout, scale,
                                inputs64[3].to(dtype))
            for name in backend_names:
                if progress:
                    progress(f"{name} {lname} {dtype}")
                rows.append(check_one(name, lname, layout, dtype, inputs64, refs64, refs_t,
                                      device, config))
    return rows


# ------------------------------------------------------------------------------ CLI
def _err(x) -> str:
    return f"{x:.2e}"


def _tolerance(row: dict) -> str | None:
    if row["fwd_tol"] is None:
        return None
    return f"{row['fwd_tol']:.1e}/" + ("-" if row["grad_tol"] is None else f"{row['grad_tol']:.1e}")


STATUS_MARKS = {"ok": "ok", "incorrect": "FAIL", "error": "ERROR"}
CHECK_COLUMNS = (
    Column("backend"), Column("layout"), Column("dtype"),
    *(Column(k, shown=False) for k in ("n_ctx", "heads", "block")),
    Column("fwd_err", "fwd err", _err, right=True), Column("grad_err", "grad err", _err,
                                                           right=True),
    Column("tolerance", right=True),
    *(Column(k, shown=False) for k in ("fwd_tol", "grad_tol")),
    Column("status", "ok", lambda s: STATUS_MARKS.get(s, s),
           style=lambda s: "green" if s == "ok" else "red"),
    Column("message", shown=False),
)


def check_table(rows, skipped_rows: bool = False) -> Rows:
    """The checked rows (the skipped ones too with ``skipped_rows``) as a table; notes: each
    error message once, with the rows it stopped, and the skipped backends with the reason."""
    shown = [dict(asdict(r), tolerance=_tolerance(asdict(r))) for r in rows
             if skipped_rows or r.status != "unsupported"]
    errors, skipped = {}, {}
    for r in rows:
        if r.status == "error":
            errors.setdefault(r.message, []).append(
                "/".join(x for x in (r.backend, r.layout, r.dtype) if x != "-"))
        elif r.status == "unsupported":
            skipped.setdefault((r.backend, r.message), []).append(f"{r.layout}/{r.dtype}")
    notes = [f"error on {', '.join(where)}: {msg}" for msg, where in errors.items()]
    notes += [f"skipped {backend} on {len(where)} layout/dtype pairs: {why}"
              for (backend, why), where in skipped.items()]
    return Rows("stbench check: backends against the dense reference (float64)", CHECK_COLUMNS,
                tuple(shown), caption="ok: err <= 2 * err(dense in that dtype) + floor "
                "(stbench.accuracy); grad: the worst of dq, dk, dv relative to its tolerance; "
                "tolerance: fwd / grad", notes=tuple(notes))


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _options(args, torch, backends) -> tuple[list, list[str]]:
    """(dtypes, backend names) of the command line; ValueError names a bad option."""
    from stbench.layouts import cases

    dtypes = []
    for d in _csv(args.dtypes):
        if d not in DTYPE_NAMES:
            raise ValueError(f"--dtypes: unknown dtype {d!r}: choose from {', '.join(DTYPE_NAMES)}")
        dtypes.append(getattr(torch, d))
    if args.backends:
        names = _csv(args.backends)
        for n in names:
            backends.info(n)  # UnknownBackend lists the registered ones
    else:
        names = backends.names()
    for opt in ("n_ctx", "heads", "batch", "head_dim"):
        if getattr(args, opt) <= 0:
            raise ValueError(f"--{opt.replace('_', '-')} must be a positive integer")
    why = block_problem(args.n_ctx, args.block)
    if why is not None:
        raise ValueError(why)
    unknown = sorted(set(_csv(args.layouts) if args.layouts else ()) - set(cases.CASES))
    if unknown:
        raise ValueError(f"--layouts: unknown {unknown}: choose from {', '.join(cases.CASES)}")
    return dtypes, names


def cmd_check(args) -> int:
    import torch

    if not torch.cuda.is_available():
        # before any Triton kernel module is imported: Triton runs on the CPU only interpreted
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from stbench import backends

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes, names = _options(args, torch, backends)
    # --json: rows as JSON lines on stdout, the table on stderr; --format: the table on stdout
    # in that format, the summary on stderr (stdout holds only the table)
    human = console(stderr=args.json or args.format != "table", width=args.width)
    only = set(_csv(args.layouts)) if args.layouts else None
    with human.status("checking...") as status:
        rows = run_checks(names, dtypes, args.n_ctx, args.heads, args.batch, args.head_dim,
                          args.block, args.seed, device, only,
                          progress=lambda s: status.update(f"checking {s}"), config=args.config)
    fmt = "table" if args.json else args.format
    emit(check_table(rows, skipped_rows=fmt in ("csv", "json")), fmt, args.width,
         stderr=args.json)
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
    failed = [r for r in rows if r.status in ("incorrect", "error")]
    checked = sum(r.status != "unsupported" for r in rows)
    say(human, f"{checked - len(failed)} of {checked} checks passed"
        + (f", {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="every available backend against the dense reference on random layouts",
        description="Check every backend against the dense reference on the shared "
        "conformance layouts (stbench.layouts.cases: every generator family, partial blocks, a "
        "token permutation, empty rows), forward and gradients, in each dtype, from seeded N(0, 1) inputs. A result in dtype T "
        "passes when err(out, ref64) <= 2 * err(ref_T, ref64) + floor[T] (stbench.accuracy). "
        "Backends that cannot run here are listed as skipped with the reason. Exit code 1 when "
        "any check fails.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to check (default: all registered; those "
                   "that cannot run here are listed as skipped with the reason)")
    p.add_argument("--dtypes", default="float32",
                   help=f"comma-separated dtypes, of {', '.join(DTYPE_NAMES)}")
    p.add_argument("--n-ctx", type=int, default=DEFAULTS["n_ctx"],
                   help="sequence length N of every layout")
    p.add_argument("--heads", type=int, default=DEFAULTS["heads"], help="attention heads H")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="batch size B")
    p.add_argument("--head-dim", type=int, default=DEFAULTS["head_dim"],
                   help="head dimension D (triton takes 32, 64, 128)")
    p.add_argument("--block", type=int, default=DEFAULTS["block"],
                   help="block size of the layouts (16..128, dividing N)")
    p.add_argument("--layouts", default=None,
                   help="comma-separated subset of the conformance cases (default: all; "
                   "the names are stbench.layouts.cases.CASES's: causal, random_perm, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and random layouts")
    p.add_argument("--config", type=json_value, default=None,
                   help="a backend config (JSON) every checked backend runs (default: each "
                   "one's own); meant for one backend: --backends triton")
    p.add_argument("--device", type=torch_device, default=None,
                   help="torch device (default: cuda if present)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per row on stdout at the end (table to stderr)")
    add_format_option(p)
    p.set_defaults(func=cmd_check)
