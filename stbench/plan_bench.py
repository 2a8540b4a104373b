"""What layouts and device plans cost at large N, on the CPU (``stbench layouts bench``).

For each (layout, block), in a fresh process of its own (so that peak memory is that
configuration's), it times with ``time.perf_counter``:

    gen_s   the generator, e.g. ``layouts.fixed(N, block=b, stride=l, heads=H)`` (median of repeats)
    hash_s  ``Layout.content_hash`` (the plan cache's key; computed once per layout)
    plan_s  ``build_plan(layout)`` from the built and hashed Layout (median of repeats)

and records the Layout's bytes (its distinct patterns' entries, mask table and permutations),
the plan's ``nbytes``, the entry counts and the process's peak resident memory. ``--stride`` is
the stride of the generators that take one and the window of those that take a window.
One JSON object per configuration (schema ``SCHEMA``, with the environment); a configuration
that fails or is killed is a row with ``status`` ``error`` and the reason.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

SCHEMA = "stbench.plan_bench/2"  # sizes in bytes (/1: MB)
DEFAULT_LAYOUTS = ("fixed", "merged_strided")
RSS_UNIT_BYTES = 1024  # ru_maxrss is in KiB on Linux


def build(name: str, n_ctx: int, block: int, stride: int, heads: int):
    """``stbench.layouts.<name>`` at (N, block, heads) with ``stride`` as its stride or window."""
    from stbench import layouts

    fn = getattr(layouts, name, None)
    if not callable(fn):
        raise ValueError(f"unknown layout {name!r}: see `stbench layouts list`")
    accepted = inspect.signature(fn).parameters
    kw = {"heads": heads} if "heads" in accepted else {}
    if "stride" in accepted:
        kw["stride"] = stride
    elif "window" in accepted:
        kw["window"] = stride
    return fn(n_ctx, block=block, **kw)


def layout_bytes(L) -> int:
    """Bytes the Layout stores: its distinct patterns' entries, the mask table, permutations
    (the per-head view ``heads_idx`` ... is not materialised here)."""
    ts = [L.pat_q, L.pat_k, L.pat_kinds, L.pat_mask_ids, L.masks]
    if L.perms is not None:
        ts.append(L.perms)
    return sum(t.numel() * t.element_size() for t in ts)


def measure(name: str, n_ctx: int, block: int, stride: int, heads: int, repeat: int) -> dict:
    """One configuration, measured in this process (run it in a fresh one)."""
    import torch

    from stbench.layouts import PARTIAL, build_plan

    gen_times, L = [], None
    for _ in range(repeat):
        L = None  # free the previous layout first
        t0 = time.perf_counter()
        L = build(name, n_ctx, block, stride, heads)
        gen_times.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    _ = L.content_hash
    hash_s = time.perf_counter() - t1
    plan_times, plan = [], None
    for _ in range(repeat):
        plan = None  # free the previous plan first
        t0 = time.perf_counter()
        plan = build_plan(L)
        plan_times.append(time.perf_counter() - t0)
    return {
        "status": "ok", "name": L.name, "nnz": L.nnz, "patterns": plan.n_patterns,
        "plan_entries": plan.n_entries,
        "partial_entries": sum(int((L.head_entries(h)[2] == PARTIAL).sum())
                               for h in range(L.heads)),
        "distinct_masks": int(L.masks.shape[0]), "block_density": L.block_density,
        "gen_s": statistics.median(gen_times), "hash_s": hash_s,
        "plan_s": statistics.median(plan_times), "plan_bytes": plan.nbytes,
        "layout_bytes": layout_bytes(L),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT_BYTES,
        "torch_threads": torch.get_num_threads(),
    }


def run(names, n_ctx: int, blocks, stride: int, heads: int, repeat: int):
    """Yield one row per (layout, block), each measured in a fresh spawned process."""
    from stbench import environment

    env = {**environment.collect().to_dict(), "cpu_count": os.cpu_count(),
           "loadavg_1m": os.getloadavg()[0]}
    for name in names:
        for block in blocks:
            base = {"schema": SCHEMA, "layout": name, "n_ctx": n_ctx, "heads": heads,
                    "block": block, "stride": stride, "repeat": repeat}
            with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
                try:
                    row = pool.submit(measure, name, n_ctx, block, stride, heads,
                                      repeat).result()
                except BrokenProcessPool:
                    row = {"status": "error", "error": "the process died (out of memory?)"}
                except Exception as exc:  # noqa: BLE001 - a failing configuration is a row
                    row = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            yield {**base, **row, "env": env}
