"""GPU check and benchmark of the CuPy backend, one self-contained run (about 2-3 minutes).

    python scripts/gpu_cupy.py --out reports/cupy_gpu.jsonl [--quick] [--no-check] [--no-bench]

(a) Correctness: the cupy backend against the dense reference (stbench.kernels.cupy.checks:
    rel_err <= 2 x the reference's own error in the dtype + floor), forward and dq/dk/dv, over
    layouts from every generator (blocks 16..128, permuted, partial, empty rows) x float16 /
    bfloat16 / float32 x head dim 32 / 64 / 128, default config, plus every tile config and the
    scalar kernel on a few layouts. --quick: head dim 64 only and fewer tile configs.
(b) Speed: TARGETS.md's standard problems (bf16, H 8, D 64, B x N = 65536, block 128) at
    N = 4096 and 16384: cupy (each config of a small space, and the best) against triton and
    flex, forward and forward+backward, timed with stbench.timing.bench (device events, L2
    flush, median / p20 / p80); also the cupy output's error against triton's.

Every outcome is a row (JSONL, one object per line, ``kind`` = env / check / bench / summary):
a compile error, a wrong result, an OOM or a missing backend is a row with its status, never a
crash. A table goes to stdout. --budget-s stops starting new rows past that many seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


class Sink:
    """Appends rows to the JSONL file and prints a line per row."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def row(self, kind: str, **fields) -> dict:
        rec = {"kind": kind, "t_s": round(elapsed(), 2), **fields}
        self.f.write(json.dumps(rec, default=str) + "\n")
        self.f.flush()
        return rec


def environment() -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        from stbench import environment as envmod

        env.update({k: v for k, v in vars(envmod.collect()).items()})
    except Exception as exc:  # noqa: BLE001
        env["environment_error"] = repr(exc)[:200]
    try:
        import cupy

        env["cupy"] = cupy.__version__
        env["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001
        env["cupy_error"] = repr(exc)[:200]
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return env


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------ (a) correctness
def check_plan(quick: bool):
    """(layout, dtype, head_dim, config) cases."""
    from stbench.kernels.cupy import backend
    from stbench.kernels.cupy.checks import case_layout
    from stbench.layouts.cases import CASES

    dtypes = [torch.float16, torch.bfloat16, torch.float32]
    head_dims = [64] if quick else [32, 64, 128]
    cases = [(name, dt, d, None) for name in CASES for dt in dtypes for d in head_dims]
    # the scalar kernel on 16-bit inputs (the cross-check of the tensor-core kernels)
    for name in ("causal", "st_mix", "random_tokens"):
        cases.append((name, torch.bfloat16, 64, {"kernel": "scalar"}))
    # every tile config on layouts with permutation / partial blocks
    for name in ("causal", "st_mix", "merged_strided", "random_tokens"):
        lay = case_layout(name)
        for d in ([64] if quick else [32, 64, 128]):
            space = [c for c in backend.config_space(lay, d, torch.float16) if c["kernel"] == "mma"]
            if quick:
                space = space[:: max(1, len(space) // 3)]
            for cfg in space:
                cases.append((name, torch.float16 if d != 64 else torch.bfloat16, d, cfg))
    return cases


def variants_of(cases):
    """Kernel variants the given (layout name or Layout, dtype, head_dim, config) cases compile."""
    from stbench.kernels.cupy.checks import case_variants

    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    out = []
    for lay, dtype, d, cfg in cases:
        out += case_variants(lay, dtype, d, cfg, cap)
    return list(dict.fromkeys(out))


def precompile(sink: Sink, variants, workers: int):
    from stbench.kernels.cupy.compile import precompile as pc

    t = time.perf_counter()
    try:
        res = pc(variants, torch.cuda.current_device(), workers)
    except Exception as exc:  # noqa: BLE001
        sink.row("precompile", status="runtime_error", error=repr(exc)[:1000])
        print(f"precompile failed: {exc!r}")
        return
    bad = {k: v for k, v in res.items() if v}
    sink.row("precompile", variants=len(res), failed=len(bad), seconds=time.perf_counter() - t,
             errors=bad)
    print(f"precompiled {len(res)} variants in {time.perf_counter() - t:.1f} s, {len(bad)} failed")
    for k, v in list(bad.items())[:5]:
        print(f"  {k}: {v[:600]}")


def run_checks(sink: Sink, quick: bool, budget: float, workers: int) -> list[dict]:
    from stbench.kernels.cupy.checks import check_case

    cases = check_plan(quick)
    precompile(sink, variants_of(cases), workers)
    rows = []
    print(f"\n{'layout':20s} {'dtype':9s} {'D':>4s} {'config':28s} {'status':14s} "
          f"{'out err/tol':>17s} {'grad err/tol':>17s}")
    for name, dt, d, cfg in cases:
        if elapsed() > budget:
            r = dict(layout=name, dtype=str(dt), head_dim=d, config=str(cfg), status="timeout",
                     error="time budget spent before this case")
        else:
            r = check_case(name, dt, d, cfg).as_dict()
        rows.append(sink.row("check", **r))
        print(f"{r['layout']:20s} {r['dtype']:9s} {r['head_dim']:4d} {r['config'][:28]:28s} "
              f"{r['status']:14s} {fmt(r.get('out_err')):>8s}/{fmt(r.get('out_tol')):8s} "
              f"{fmt(r.get('grad_err')):>8s}/{fmt(r.get('grad_tol')):8s}")
        if r["status"] not in ("ok", "timeout") and r.get("error"):
            print("    " + r["error"].strip().replace("\n", "\n    ")[:800])
    return rows


# ------------------------------------------------------------------ (b) speed
BENCH_NS = (4096, 16384)


def bench_tiles(quick: bool, block: int = 128) -> list[dict]:
    """The cupy configs timed per problem (D 64), tiles clipped to the layout block; the best
    one is reported."""
    shapes = ((128, 64, 32), (64, 64, 16), (128, 64, 16), (64, 32, 16), (128, 32, 32))
    if quick:
        shapes = shapes[:3]
    tiles = [{"kernel": "mma", "BLOCK_M": min(m, block), "BLOCK_N": min(n, block),
              "WARP_M": w if min(m, block) % w == 0 else 16} for m, n, w in shapes]
    return [dict(t) for t in dict.fromkeys(tuple(sorted(t.items())) for t in tiles)]

def _status_of(exc: BaseException) -> str:
    from stbench.backends import BackendUnavailable

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    if isinstance(exc, BackendUnavailable):
        return "unsupported"
    if "Compile" in type(exc).__name__:
        return "compile_error"
    return "runtime_error"


def time_one(module, q, k, v, layout, scale, config, mode):
    """Timing of one backend call (fwd or fwd+bwd), outputs computed once outside the timer."""
    from stbench.timing import bench

    def fwd():
        return module.attention(q, k, v, layout, scale, config)

    if mode == "fwd":
        with torch.no_grad():
            out = fwd()
            timing = bench(lambda: fwd())
        return out, timing
    dout = torch.randn_like(q)
    out = fwd()
    out.backward(dout)

    def fwd_bwd():
        fwd().backward(dout)

    timing = bench(fwd_bwd, grad_to_none=[q, k, v])
    return out.detach(), timing


def launch_overhead(sink: Sink, modules: dict):
    """Host time per forward call on a tiny problem (GPU work negligible): when this is near a
    problem's kernel time, the launch path, not the kernel, bounds what bench() sees."""
    from stbench import layouts

    lay = layouts.causal(256, block=64, heads=2)
    q, k, v = (torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    print()
    for name, module in modules.items():
        if isinstance(module, Exception):
            continue
        try:
            with torch.no_grad():
                for _ in range(3):
                    module.attention(q, k, v, lay, 0.125, None)
                torch.cuda.synchronize()
                reps = 200
                t = time.perf_counter()
                for _ in range(reps):
                    module.attention(q, k, v, lay, 0.125, None)
                host_us = (time.perf_counter() - t) / reps * 1e6
                torch.cuda.synchronize()
            sink.row("overhead", backend=name, host_us_per_call=host_us)
            print(f"launch overhead {name:8s} {host_us:8.1f} us per forward call (host)")
        except Exception as exc:  # noqa: BLE001
            sink.row("overhead", backend=name, status=_status_of(exc), error=repr(exc)[:500])


def run_bench(sink: Sink, quick: bool, budget: float, backends_wanted: list[str], workers: int):
    from stbench import backends
    from stbench.accuracy import rel_err
    from stbench.kernels.cupy import backend as cupy_backend
    from stbench.timing import attention_flops, tflops

    problems = bench_problems(quick)

    layouts_built = {}
    for p in problems:
        key = (p.layout.name, p.n_ctx)
        if key not in layouts_built:
            try:
                layouts_built[key] = build_layout(p)
            except Exception as exc:  # noqa: BLE001
                layouts_built[key] = exc
    pre = []
    for (name, N), lay in layouts_built.items():
        if not isinstance(lay, Exception):
            for cfg in bench_tiles(quick, lay.block):
                pre.append((lay, torch.bfloat16, 64, cfg))
    precompile(sink, variants_of(pre), workers)

    modules = {}
    for name in backends_wanted:
        try:
            modules[name] = backends.load(name)
            modules[name].check_available(torch.device("cuda"), torch.bfloat16)
        except Exception as exc:  # noqa: BLE001
            modules[name] = exc
            sink.row("bench", backend=name, status="unsupported", error=str(exc)[:500])
            print(f"backend {name}: unavailable: {exc}")

    launch_overhead(sink, modules)
    print(f"\n{'problem':42s} {'backend':8s} {'config':26s} {'status':12s} {'median ms':>10s} "
          f"{'TFLOP/s':>8s} {'err vs triton':>13s}")
    summary = []
    for p in problems:
        lay = layouts_built[(p.layout.name, p.n_ctx)]
        label = p.label()
        if isinstance(lay, Exception):
            sink.row("bench", problem=label, status="unsupported", error=str(lay)[:300])
            print(f"{label:42s} layout cannot be built: {lay}")
            continue
        q, k, v = p.inputs("cuda")
        scale = 1.0 / math.sqrt(p.head_dim)
        flops = attention_flops(lay, p.batch, p.head_dim, p.mode)
        best = {}
        ref_out = None
        runs = []
        # triton first: its output is what cupy's is compared with
        for name in sorted(backends_wanted, key=lambda b: b != "triton"):
            if name == "cupy":
                runs += [("cupy", c) for c in bench_tiles(quick, lay.block)]
            else:
                runs.append((name, None))
        for name, cfg in runs:
            module = modules.get(name)
            if isinstance(module, Exception) or module is None:
                continue
            base = dict(problem=label, layout=p.layout.name, n_ctx=p.n_ctx, batch=p.batch,
                        heads=p.heads, head_dim=p.head_dim, dtype=p.dtype, mode=p.mode,
                        backend=name, config=cfg, block=lay.block,
                        block_density=lay.block_density)
            if elapsed() > budget:
                sink.row("bench", **base, status="timeout", error="time budget spent")
                continue
            try:
                if name == "cupy":
                    cupy_backend.prepare(lay, q, cfg)
                out, t = time_one(module, q, k, v, lay, scale, cfg, p.mode)
                torch.cuda.synchronize()
                err = None
                if name == "triton":
                    ref_out = out
                elif name == "cupy" and ref_out is not None:
                    err = rel_err(out, ref_out)
                bad = not torch.isfinite(out).all()
                status = "incorrect" if bad else "ok"
                rec = sink.row("bench", **base, status=status, median_ms=t.median_ms,
                               p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
                               tflops=tflops(flops, t.median_ms), err_vs_triton=err)
                if status == "ok" and (name not in best or t.median_ms < best[name]["median_ms"]):
                    best[name] = rec
                print(f"{label:42s} {name:8s} {str(cfg or '')[:26]:26s} {status:12s} "
                      f"{t.median_ms:10.4f} {fmt(rec['tflops'], '.1f'):>8s} {fmt(err):>13s}")
            except Exception as exc:  # noqa: BLE001
                status = _status_of(exc)
                sink.row("bench", **base, status=status,
                         error=(repr(exc) + "\n" + traceback.format_exc(limit=4))[:1500])
                print(f"{label:42s} {name:8s} {str(cfg or '')[:26]:26s} {status:12s} {exc!r:.120}")
            finally:
                for t_ in (q, k, v):
                    t_.grad = None
                torch.cuda.empty_cache()
        if "cupy" in best:
            row = dict(problem=label, cupy_best_ms=best["cupy"]["median_ms"],
                       cupy_best_config=best["cupy"]["config"])
            for peer in ("triton", "flex"):
                if peer in best:
                    row[f"{peer}_ms"] = best[peer]["median_ms"]
                    row[f"cupy_speed_vs_{peer}"] = (best[peer]["median_ms"]
                                                    / best["cupy"]["median_ms"])
            summary.append(sink.row("summary", **row))
    print(f"\n{'problem':42s} {'cupy best ms':>12s} {'x triton':>9s} {'x flex':>8s}  "
          "(x > 1: cupy faster; TARGETS item 4 wants x triton >= 0.7)")
    for s in summary:
        print(f"{s['problem']:42s} {s['cupy_best_ms']:12.4f} "
              f"{fmt(s.get('cupy_speed_vs_triton'), '.2f'):>9s} "
              f"{fmt(s.get('cupy_speed_vs_flex'), '.2f'):>8s}")


def bench_problems(quick: bool):
    from stbench.problems import Problem, batch_for, layout_spec

    names = ("causal", "st_mix", "fixed") if quick else ("causal", "local", "strided", "fixed",
                                                         "st_mix")
    return [Problem(layout_spec(n), N, batch_for(N), mode=m)
            for N in BENCH_NS for n in names for m in ("fwd", "fwd+bwd")]


def build_layout(p):
    """The problem's layout at its block (128), else at the largest block that exists (strided
    at N = 4096 needs (N / l) % block == 0: block 32); every backend gets the same one."""
    from stbench.layouts import LayoutError

    first = None
    for block in (None, 64, 32, 16):
        try:
            return p.build_layout(block)
        except LayoutError as exc:
            first = first or exc
    raise first


def dry_run(sink: Sink, quick: bool) -> int:
    """What a run would do, without a GPU: cases, the variants they compile, the problems."""
    cases = check_plan(quick)
    variants = variants_of(cases)
    built = {}
    for p in bench_problems(quick):
        if (p.layout.name, p.n_ctx) not in built:
            lay = build_layout(p)
            built[(p.layout.name, p.n_ctx)] = lay
            print(f"problem layout {p.layout.name:8s} N={p.n_ctx:6d} block={lay.block} "
                  f"nnz={lay.nnz} density={lay.block_density:.4f} permuted={lay.perms is not None}")
    bench_variants = variants_of([(lay, torch.bfloat16, 64, c) for lay in built.values()
                                  for c in bench_tiles(quick, lay.block)])
    sink.row("dry_run", cases=len(cases), variants=len(variants),
             bench_variants=len(bench_variants), problems=len(bench_problems(quick)))
    print(f"{len(cases)} check cases compiling {len(variants)} variants; "
          f"{len(bench_problems(quick))} bench problems compiling {len(bench_variants)} variants")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSONL file to append rows to")
    ap.add_argument("--quick", action="store_true", help="fewer cases and problems")
    ap.add_argument("--no-check", action="store_true", help="skip (a), correctness")
    ap.add_argument("--no-bench", action="store_true", help="skip (b), timing")
    ap.add_argument("--backends", default="cupy,triton,flex",
                    help="comma-separated backends to time (default: cupy,triton,flex)")
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="start no new row after this many seconds (default 170)")
    ap.add_argument("--dry-run", action="store_true",
                    help="list the cases, variants and problems (and build the layouts), run none")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                    help="processes compiling kernels in parallel")
    args = ap.parse_args(argv)
    sink = Sink(args.out)
    sink.row("env", **environment(), argv=sys.argv)
    if args.dry_run:
        return dry_run(sink, args.quick)
    if not torch.cuda.is_available():
        sink.row("summary", status="unsupported", error="no CUDA GPU: nothing to run")
        print("no CUDA GPU: nothing to run (rows written to", args.out, ")")
        return 0
    try:
        from stbench.kernels.cupy import backend

        backend.check_available(torch.device("cuda"), torch.bfloat16)
    except Exception as exc:  # noqa: BLE001
        sink.row("summary", status="unsupported", error=str(exc))
        print(f"cupy backend unavailable: {exc}")
        return 0
    check_budget = args.budget_s * (0.45 if not args.no_bench else 1.0)
    if not args.no_check:
        rows = run_checks(sink, args.quick, check_budget, args.workers)
        counts = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        sink.row("summary", part="check", counts=counts)
        print(f"\ncheck: {counts}  ({elapsed():.0f} s)")
    if not args.no_bench:
        run_bench(sink, args.quick, args.budget_s, args.backends.split(","), args.workers)
    print(f"\ndone in {elapsed():.0f} s; rows appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
