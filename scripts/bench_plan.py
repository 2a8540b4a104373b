"""Benchmark layout generation and device-plan building at large N (CPU).

For each (layout, block) it runs one fresh subprocess (so peak memory is per configuration) that
times, with ``time.perf_counter``:

    gen_s   the generator, e.g. ``layouts.fixed(N, block, stride, heads)`` (median of --repeat)
    hash_s  ``Layout.content_hash`` (the plan cache key; needed once per layout)
    plan_s  ``build_plan(layout)`` from the already built and hashed Layout (median of --repeat)

and records the Layout's bytes (its entry arrays, mask table and permutations), the plan's
``nbytes``, the entry counts and the subprocess's peak RSS. Prints a table and appends one JSON
line per configuration to ``--out``.

    python scripts/bench_plan.py --out reports/plan_bench.jsonl
    python scripts/bench_plan.py --blocks 128 --layouts fixed --stride 1024 --out /tmp/p.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SCHEMA = "stbench.plan_bench/1"
LAYOUTS = ("fixed", "merged_strided", "st_mix", "strided", "local", "causal")


def layout_bytes(L) -> int:
    """Bytes the Layout stores: its distinct patterns' entries, the mask table, permutations
    (the per-head view ``heads_idx`` ... is not materialised here)."""
    ts = [L.pat_q, L.pat_k, L.pat_kinds, L.pat_mask_ids, L.masks]
    if L.perms is not None:
        ts.append(L.perms)
    return sum(t.numel() * t.element_size() for t in ts)


def make(kind: str, n: int, block: int, stride: int, heads: int):
    from stbench import layouts

    if kind in ("fixed", "merged_strided", "st_mix", "strided"):
        return getattr(layouts, kind)(n, block=block, stride=stride, heads=heads)
    if kind == "local":
        return layouts.local(n, block=block, window=stride, heads=heads)
    if kind == "causal":
        return layouts.causal(n, block=block, heads=heads)
    raise SystemExit(f"unknown layout {kind!r}: choose from {', '.join(LAYOUTS)}")


def run_one(kind: str, n: int, block: int, stride: int, heads: int, repeat: int) -> dict:
    """Measure one configuration in this process; returns the result row."""
    import torch

    from stbench.layouts import build_plan
    from stbench.layouts.layout import PARTIAL

    gen_times = []
    for _ in range(repeat):
        L = None  # free the previous layout first
        t0 = time.perf_counter()
        L = make(kind, n, block, stride, heads)
        gen_times.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    _ = L.content_hash
    t2 = time.perf_counter()
    plan_times = []
    plan = None
    for _ in range(repeat):
        plan = None  # free the previous plan first
        s = time.perf_counter()
        plan = build_plan(L)
        plan_times.append(time.perf_counter() - s)
    return {
        "layout": kind,
        "name": L.name,
        "n_ctx": n,
        "heads": heads,
        "block": block,
        "stride": stride,
        "nnz": L.nnz,
        "patterns": plan.n_patterns,
        "plan_entries": plan.n_entries,
        "partial_entries": sum(
            int((L.head_entries(h)[2] == PARTIAL).sum()) for h in range(L.heads)
        ),
        "distinct_masks": int(L.masks.shape[0]),
        "block_density": L.block_density,
        "gen_s": statistics.median(gen_times),
        "hash_s": t2 - t1,
        "plan_s": statistics.median(plan_times),
        "plan_mb": plan.nbytes / 1e6,
        "layout_mb": layout_bytes(L) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "torch_threads": torch.get_num_threads(),
    }


def environment() -> dict:
    import torch

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "git_sha": sha,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 20, help="sequence length N (default 2^20)")
    ap.add_argument("--heads", type=int, default=8, help="heads (default 8)")
    ap.add_argument("--stride", type=int, default=1024,
                    help="stride l (window for local); default 1024 = sqrt(N)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 128], help="block sizes")
    ap.add_argument("--layouts", nargs="+", default=["fixed", "merged_strided"], choices=LAYOUTS)
    ap.add_argument("--repeat", type=int, default=3, help="plan builds per config (median)")
    ap.add_argument("--out", required=True, help="JSONL file to append result rows to")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:  # child process: one configuration, JSON on stdout
        row = run_one(args.layouts[0], args.n, args.blocks[0], args.stride, args.heads,
                      args.repeat)
        print(json.dumps(row))
        return 0

    env = environment()
    rows = []
    for kind in args.layouts:
        for block in args.blocks:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", "--layouts", kind,
                   "--blocks", str(block), "--n", str(args.n), "--heads", str(args.heads),
                   "--stride", str(args.stride), "--repeat", str(args.repeat), "--out", "-"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["status"] = "ok"
            else:
                tail = (proc.stderr or "").strip().splitlines()[-1:] or ["killed"]
                row = {"layout": kind, "n_ctx": args.n, "heads": args.heads, "block": block,
                       "stride": args.stride, "status": "error", "error": tail[0],
                       "returncode": proc.returncode}
            row = {"schema": SCHEMA, **row, "env": env}
            rows.append(row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print_row(row)
    return 0


HEADER = (f"{'layout':<16}{'block':>6}{'nnz':>12}{'pat':>4}{'entries':>12}{'gen s':>8}"
          f"{'hash s':>8}{'plan s':>8}{'plan MB':>9}{'layout MB':>10}{'peak MB':>9}")


def print_row(row: dict, _printed=[]) -> None:  # noqa: B006  (header once per process)
    if not _printed:
        print(HEADER)
        _printed.append(True)
    if row["status"] != "ok":
        print(f"{row['layout']:<16}{row['block']:>6}  {row['status']}: {row.get('error')}")
        return
    print(f"{row['layout']:<16}{row['block']:>6}{row['nnz']:>12,}{row['patterns']:>4}"
          f"{row['plan_entries']:>12,}{row['gen_s']:>8.2f}{row['hash_s']:>8.2f}"
          f"{row['plan_s']:>8.2f}{row['plan_mb']:>9.1f}{row['layout_mb']:>10.1f}"
          f"{row['peak_rss_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
