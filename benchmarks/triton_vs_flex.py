"""Triton backend vs FlexAttention, side by side in one run (TARGETS.md items 1, 2, 3, 6).

    python3 benchmarks/triton_vs_flex.py --suite standard --ns 1024,4096,16384,65536 \
        --out reports/triton/triton_vs_flex.jsonl
    python3 benchmarks/triton_vs_flex.py --suite paper --out ...      # exact masks, item 3
    python3 benchmarks/triton_vs_flex.py --suite scale --ns 131072,1048576 --out ...

Per problem: every Triton configuration and every FlexAttention variant is first checked against
the dense reference (``stbench.tuning.check``: output and, for fwd+bwd, gradients; every row
up to N = 16384, sampled rows beyond; fresh random inputs), then timed (the default config and the autotuner's pick, ``candidates``; each a ``tune`` row,
the faster the ``sweep`` row) and the FlexAttention
peer (``stbench.kernels.flex``; for the paper's masks, a BlockMask from the token predicate at
its default block 128 and at block 64 with 64 tiles, as a user would write it). Times come from
``stbench.timing.bench`` (CUDA events, L2 flush, median, p20/p80); FLOPs use the shared
numerator (allowed pairs). Rows follow stbench/results.py's schema; the last lines printed are a
table of triton/flex ratios.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from dataclasses import replace

import torch

from stbench import autotune, environment, problems, results, timing
from stbench.kernels import flex
from stbench.kernels.triton import backend as tb
from stbench.tuning import check

PAPER_PREDICATES = {
    # fixed, l = 128, c = 32 (head h' = 0): own period, or the last c keys of every period
    "paper_fixed": lambda q, k: (k <= q) & ((q // 128 == k // 128) | (k % 128 >= 96)),
    # merged strided head: local(128) or (q - k) % 128 == 0
    "paper_union": lambda q, k: (k <= q) & (((q - k) < 128) | ((q - k) % 128 == 0)),
}
TUNE_MAX_EVALS = 16  # candidates the autotuner measures per problem (local search)
FWD_PICKS = {}  # (layout name, N) -> (block, config): the 'fwd+bwd' tune varies the backward


def candidates(prob, layout, checker):
    """(layout, config) pairs to time: the default config, and the autotuner's pick (local
    search over ``config_space`` and the layout blocks to which it re-blocks exactly; every
    candidate it measures is checked against the same dense reference first)."""
    base = tb.default_config(layout, prob.head_dim, prob.torch_dtype).as_dict()
    out = [(layout, base)]
    key = (prob.layout.name, prob.n_ctx)
    forward = {"triton": FWD_PICKS[key]} if key in FWD_PICKS else None
    res = autotune.tune(prob, ["triton"], device=checker.fresh[0].device, strategy="local",
                        save=False, layout=layout, inputs=checker.fresh, reference=checker.ref,
                        max_evals=TUNE_MAX_EVALS, forward=forward)
    if res.best is not None:
        if prob.mode == "fwd":
            FWD_PICKS[key] = (res.best.block, res.best.config)
        if (res.best.block, res.best.config) != (layout.block, base):
            out.append((autotune.reblock(layout, res.best.block), res.best.config))
    print(f"  tuned {prob.label()}: {res.evaluated} of {res.candidates} candidates in "
          f"{res.seconds:.1f} s", flush=True)
    return out


def make_call(fn, q, k, v, do, mode):
    if mode == "fwd":
        return lambda: fn(q, k, v)

    def step():
        fn(q, k, v).backward(do)

    return step


class Checker:
    """The dense-reference gate (``stbench.tuning.check.Reference``: every row up to N = 16384,
    sampled query rows beyond) on fresh random inputs of the problem's shape, computed once per
    problem; ``check(fn)`` judges ``fn(q, k, v) -> out`` (and its gradients for 'fwd+bwd')."""

    def __init__(self, layout, q, mode, scale):
        grad = mode == "fwd+bwd"  # the tuner times fwd+bwd candidates on these tensors
        self.fresh = [torch.randn_like(q).requires_grad_(grad) for _ in range(3)]  # unseeded
        self.ref = check.Reference(*self.fresh, layout, scale, mode)

    def check(self, fn):
        v = self.ref.check_backend(fn, inputs=self.fresh)
        return v.ok, v.err, v.tol, f"{v.check} vs dense fp64 ({v.worst} worst)"


def row(prob, layout, backend, status, env, **kw):
    return results.ResultRow(
        batch=prob.batch, heads=prob.heads, n_ctx=prob.n_ctx, head_dim=prob.head_dim,
        dtype=prob.dtype, mode=prob.mode, layout=prob.layout.name, block=layout.block,
        token_density=layout.token_density, block_density=layout.block_density,
        layout_hash=layout.content_hash, nnz=layout.nnz, backend=backend, status=status,
        env=env, timestamp=results.now(), **kw,
    )


def timed(fn, grads):
    t = timing.bench(fn, warmup_ms=10, rep_ms=60, grad_to_none=grads)
    return dict(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps)


def run_problem(prob, out_path, env, table, flex_variants):
    try:
        layout = prob.build_layout()
    except problems.layouts.LayoutError as exc:
        print(f"unsupported {prob.label()}: {exc}", flush=True)
        return
    q, k, v = prob.inputs("cuda")
    do = torch.randn_like(q)
    scale = prob.head_dim**-0.5
    grads = [q, k, v] if prob.mode == "fwd+bwd" else None
    flops = timing.attention_flops(layout, prob.batch, prob.head_dim, prob.mode)
    rows, best = [], None
    checker = Checker(layout, q, prob.mode, scale)
    for lay, cfg in candidates(prob, layout, checker):
        try:
            ok, err, tol, how = checker.check(  # every candidate is checked before timing
                lambda a, b, c, cfg=cfg, lay=lay: tb.attention(a, b, c, lay, scale, cfg))
            if not ok:
                print(f"INCORRECT {prob.label()} {cfg} err={err:.3g} tol={tol:.3g}", flush=True)
                rows.append(row(prob, lay, "triton", "incorrect", env, err=err, tol=tol,
                                check=how, config=cfg, kind="tune"))
                continue
            fn = make_call(
                lambda a, b, c, cfg=cfg, lay=lay: tb.attention(a, b, c, lay, scale, cfg),
                q, k, v, do, prob.mode)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            prep = (time.perf_counter() - t0) * 1e3
            t = timed(fn, grads)
            r = row(prob, lay, "triton", "ok", env, config=cfg, kind="tune", err=err, tol=tol,
                    check=how, prepare_ms=prep, tflops=timing.tflops(flops, t["median_ms"]), **t)
        except Exception as exc:  # a failing config is a data point
            r = row(prob, lay, "triton", "runtime_error", env, config=cfg, kind="tune",
                    error=repr(exc)[:400])
        rows.append(r)
        if r.status == "ok" and (best is None or r.median_ms < best.median_ms):
            best = r
    if best is not None:
        rows.append(replace(best, kind="sweep", tuned=True))
    fl_best = None
    for name, fn_flex in flex_variants(layout, prob, scale):
        try:
            ok, err, tol, how = checker.check(fn_flex)  # the peer passes the same gate
            if not ok:
                print(f"INCORRECT flex[{name}] {prob.label()} err={err:.3g} tol={tol:.3g}",
                      flush=True)
                rows.append(row(prob, layout, "flex", "incorrect", env, err=err, tol=tol,
                                check=how, config={"variant": name}))
                continue
            fn = make_call(fn_flex, q, k, v, do, prob.mode)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            prep = (time.perf_counter() - t0) * 1e3
            t = timed(fn, grads)
            r = row(prob, layout, "flex", "ok", env, config={"variant": name}, prepare_ms=prep,
                    err=err, tol=tol, check=how, tflops=timing.tflops(flops, t["median_ms"]), **t)
        except Exception as exc:
            r = row(prob, layout, "flex", "compile_error", env, config={"variant": name},
                    error=repr(exc)[:400])
        rows.append(r)
        if r.status == "ok":
            fl_best = r if fl_best is None else fl_best
            table.append((prob.label(), name, best.median_ms if best else math.nan,
                          r.median_ms, (r.median_ms / best.median_ms) if best else math.nan))
    results.append_rows(out_path, rows)
    bt = f"{best.median_ms:.4f} ms {best.config}" if best else "FAILED"
    print(f"{prob.label()}: triton {bt}", flush=True)
    for lbl, name, tt, tf, ratio in table[-2:]:
        if lbl == prob.label():
            print(f"    flex[{name}] {tf:.4f} ms  speedup {ratio:.2f}x", flush=True)


def block_flex(layout, prob, scale):
    return [("blockmask", lambda a, b, c: flex.attention(a, b, c, layout, scale))]


def paper_flex(layout, prob, scale, compile_mask=True):
    """FlexAttention on the paper's token predicate through ``create_block_mask`` at its
    default block 128 (and 64 for the forward). ``compile_mask``: build the BlockMask as users
    do at long N (compiled); False builds the same mask eagerly (untimed either way)."""
    pred = PAPER_PREDICATES[prob.layout.name]
    out = []
    for blk in (128, 64):
        if prob.mode == "fwd+bwd" and blk != 128:
            continue  # its backward does not compile below 128 (TARGETS.md); tried once below
        bm = flex.flex_block_mask_from_predicate(pred, prob.n_ctx, None, blk, "cuda",
                                                 compile_mask=compile_mask)
        opts = None if blk == 128 else {"BLOCK_M": blk, "BLOCK_N": blk}
        out.append((f"predicate_block{blk}",
                    lambda a, b, c, bm=bm, opts=opts: flex.flex_with_block_mask(
                        a, b, c, bm, scale, kernel_options=opts)))
    return out


def plot(jsonl: str, png: str, title: str | None = None) -> None:
    """Bar chart of the ``sweep`` rows' median times (log scale), per layout and mode, one bar
    per backend (a failed backend shows no bar): a pure function of the JSONL file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.read_rows(jsonl) if r.kind == "sweep"]
    keys = sorted({(r.layout, r.mode, r.n_ctx) for r in rows})

    def label(r):  # one bar per FlexAttention variant (default block, best block, ...)
        variant = (r.config or {}).get("variant")
        return f"{r.backend}[{variant}]" if variant else r.backend

    backends = sorted({label(r) for r in rows})
    fig, ax = plt.subplots(figsize=(1.2 * len(keys) + 2, 4))
    width = 0.8 / max(1, len(backends))
    for i, be in enumerate(backends):
        ys = []
        for key in keys:
            hit = [r for r in rows if (r.layout, r.mode, r.n_ctx) == key and label(r) == be
                   and r.status == "ok"]
            ys.append(hit[0].median_ms if hit else float("nan"))
        ax.bar([j + i * width for j in range(len(keys))], ys, width, label=be)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    ax.set_xticklabels([f"{lay}\n{mode}\nN={n}" for lay, mode, n in keys], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.legend()
    ax.set_title(title or f"{jsonl.split('/')[-1]}: bf16, H=8, D=64")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("standard", "paper", "scale"), default="standard")
    ap.add_argument("--ns", default="1024,4096,16384,65536")
    ap.add_argument("--layouts", default=",".join(problems.STANDARD_LAYOUTS))
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--out", help="JSONL to append rows to (required unless --plot)")
    ap.add_argument("--plot", nargs=2, metavar=("JSONL", "PNG"), help="only plot a results file")
    ap.add_argument("--title", help="plot title (with --plot)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new problems after")
    ap.add_argument("--eager-mask", action="store_true",
                    help="paper suite: build FlexAttention's BlockMask from the predicate eagerly "
                         "(the same mask; its compiled build hung twice on a fresh H200 host in "
                         "session 7; N <= 16384, where the N x N predicate fits in memory)")
    args = ap.parse_args(argv)
    if args.plot:
        plot(*args.plot, title=args.title)
        return 0
    if not args.out:
        ap.error("--out is required (or use --plot JSONL PNG)")
    modes = tuple(args.modes.split(","))
    ns = [int(x) for x in args.ns.split(",")]
    if args.suite == "standard":
        probs = problems.standard_problems(ns, tuple(args.layouts.split(",")), modes)
        variants = block_flex
    elif args.suite == "paper":
        probs = [p for p in problems.paper_problems(modes) if p.n_ctx in ns or not ns]
        variants = functools.partial(paper_flex, compile_mask=not args.eager_mask)
    else:
        spec = problems.layout_spec("st_mix")
        probs = [problems.Problem(spec, n, 1, mode=m) for n in ns for m in modes]
        variants = block_flex
    env = environment.collect().to_dict()
    start, table = time.time(), []
    for prob in probs:
        if time.time() - start > args.budget_s:
            print(f"budget reached; skipped {prob.label()}", flush=True)
            continue
        try:
            run_problem(prob, args.out, env, table, variants)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"OOM {prob.label()}: {exc}", flush=True)
            torch.cuda.empty_cache()
    print("\nproblem | flex variant | triton ms | flex ms | flex/triton")
    for lbl, name, tt, tf, ratio in table:
        print(f"{lbl} | {name} | {tt:.4f} | {tf:.4f} | {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
