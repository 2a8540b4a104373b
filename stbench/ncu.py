"""Nsight Compute's raw pages (``NAME.raw.csv``, written by ``stbench profile``) as one markdown
table: per kernel, its time, the DRAM bytes it moved, the tensor pipe's and the SMs' activity,
occupancy (achieved / theoretical, and what limits it), and its top warp stalls.

    stbench profile --summary reports/profile/h200 > reports/profile/h200/SUMMARY.md

DRAM bytes = DRAM throughput x kernel time (the raw page carries the rate). Stall columns are
ncu's ``smsp__average_warps_issue_stalled_*_per_issue_active`` ratios: warps stalled for that
reason per issued instruction; the three largest are listed.
"""

from __future__ import annotations

import csv
from pathlib import Path

TIME_UNITS = {"ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
              "nsecond": 1e-9, "second": 1.0, "s": 1.0}
RATE_UNITS = {"byte/s": 1.0, "Kbyte/s": 1e3, "Mbyte/s": 1e6, "Gbyte/s": 1e9, "Tbyte/s": 1e12}
TENSOR_PIPE = "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
WGMMA_INST = "sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active"
MMA_SYNC_INST = "sm__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active"
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"


def read_raw(path: Path) -> list[dict]:
    """Rows of one raw page: {metric: (value text, unit)} per kernel launch."""
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    start = next((i for i, r in enumerate(rows) if r and r[0] == "ID"), None)
    if start is None or len(rows) < start + 2:
        return []
    header, units = rows[start], rows[start + 1]
    return [{h: (v, u) for h, v, u in zip(header, r, units)} for r in rows[start + 2:]]


def num(kernel: dict, metric: str) -> float | None:
    v = kernel.get(metric)
    if v is None:
        return None
    try:
        return float(v[0].replace(",", ""))
    except ValueError:
        return None


def seconds(kernel: dict) -> float | None:
    t = num(kernel, "gpu__time_duration.sum")
    unit = kernel.get("gpu__time_duration.sum", ("", ""))[1]
    return None if t is None else t * TIME_UNITS.get(unit, 1e-9)


def dram_bytes(kernel: dict, secs: float | None) -> float | None:
    rate = num(kernel, "dram__bytes.sum.per_second")
    unit = kernel.get("dram__bytes.sum.per_second", ("", ""))[1]
    if rate is None or secs is None:
        return None
    return rate * RATE_UNITS.get(unit, 1.0) * secs


def top_stalls(kernel: dict, k: int = 3) -> str:
    stalls = []
    for metric in kernel:
        if metric.startswith(STALL_PREFIX) and metric.endswith(STALL_SUFFIX):
            v = num(kernel, metric)
            if v:
                stalls.append((v, metric[len(STALL_PREFIX):-len(STALL_SUFFIX)]))
    return ", ".join(f"{name} {v:.2f}" for v, name in sorted(stalls, reverse=True)[:k])


def fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def kib(kernel: dict, metric: str) -> float:
    """A shared-memory size in KiB (ncu gives "byte/block", "Kbyte/block", ...); 0 if absent."""
    v = num(kernel, metric)
    if v is None:
        return 0.0
    unit = kernel[metric][1].split("/")[0]
    return v * {"byte": 1 / 1024, "Kbyte": 1000 / 1024, "Mbyte": 1e6 / 1024}.get(unit, 1 / 1024)


def limiter(kernel: dict) -> str:
    """The occupancy limiters that allow the fewest blocks per SM."""
    limits = {name: num(kernel, f"launch__occupancy_limit_{name}")
              for name in ("registers", "shared_mem", "warps", "blocks")}
    limits = {k: v for k, v in limits.items() if v is not None}
    if not limits:
        return ""
    low = min(limits.values())
    return f"{int(low)} ({'/'.join(k for k, v in limits.items() if v == low)})"


HEADER = ("| profile | kernel | grid x block | time us | DRAM MB | DRAM TB/s | L2 hit % | SM % | "
          "tensor pipe % | wgmma inst % | mma.sync inst % | occupancy % (achieved / theor.) | "
          "blocks/SM (limit) | regs | smem KB | waves | top stalls (per issue) |")


def table(folder: Path) -> str:
    """The markdown table of every ``*.raw.csv`` page in ``folder``, one row per kernel launch."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for path in sorted(folder.glob("*.raw.csv")):
        for kern in read_raw(path):
            secs = seconds(kern)
            moved = dram_bytes(kern, secs)
            name = kern.get("Kernel Name", ("?", ""))[0]
            smem = sum(kib(kern, f"launch__shared_mem_per_block_{kind}")
                       for kind in ("static", "dynamic"))
            lines.append(
                f"| {path.name.removesuffix('.raw.csv')} | {name[:40]} "
                f"| {fmt(num(kern, 'launch__grid_size'), '.0f')} x "
                f"{fmt(num(kern, 'launch__block_size'), '.0f')} "
                f"| {fmt(None if secs is None else secs * 1e6, '.1f')} "
                f"| {fmt(None if moved is None else moved / 1e6, '.1f')} "
                f"| {fmt(None if moved is None or not secs else moved / secs / 1e12, '.2f')} "
                f"| {fmt(num(kern, 'lts__t_sector_hit_rate.pct'), '.0f')} "
                f"| {fmt(num(kern, 'sm__throughput.avg.pct_of_peak_sustained_elapsed'), '.0f')} "
                f"| {fmt(num(kern, TENSOR_PIPE), '.0f')} "
                f"| {fmt(num(kern, WGMMA_INST), '.0f')} "
                f"| {fmt(num(kern, MMA_SYNC_INST), '.0f')} "
                f"| {fmt(num(kern, 'sm__warps_active.avg.pct_of_peak_sustained_active'), '.0f')} / "
                f"{fmt(num(kern, 'sm__maximum_warps_per_active_cycle_pct'), '.0f')} "
                f"| {limiter(kern)} "
                f"| {fmt(num(kern, 'launch__registers_per_thread'), '.0f')} "
                f"| {fmt(smem, '.0f')} "
                f"| {fmt(num(kern, 'launch__waves_per_multiprocessor'), '.2f')} "
                f"| {top_stalls(kern)} |")
    return "\n".join(lines) + "\n"
