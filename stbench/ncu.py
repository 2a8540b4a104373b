"""Nsight Compute's raw pages (``NAME.raw.csv``, written by ``stbench profile``) as one markdown
table: per kernel, its time, the DRAM bytes it moved, the tensor pipe's and the SMs' activity,
occupancy (achieved / theoretical, and what limits it), and its top warp stalls. With source
pages (``NAME.source.csv``, ``stbench profile --source``): per kernel, the SASS instructions
where the warps' stall samples fall, hottest first, with their top stall reasons.

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


SAMPLES = "Warp Stall Sampling (All Samples)"
STALL_COLUMN = "stall_"  # the source page's per-reason sample columns: stall_<reason>
HOT = 12  # instructions listed per kernel


def read_source(path: Path) -> dict[str, list[dict]]:
    """One source page (``ncu --page source --print-source sass --csv``): {kernel name: rows},
    a row per SASS instruction with its address, text, stall samples and the samples of each
    stall reason (not-issued duplicates left out)."""
    kernels: dict[str, list[dict]] = {}
    rows, header = None, None
    with path.open(newline="") as f:
        for r in csv.reader(f):
            if not r:
                continue
            if r[0] == "Kernel Name":
                rows = kernels.setdefault(r[1] if len(r) > 1 else "?", [])
                header = None
            elif rows is not None and header is None:
                header = r
            elif rows is not None:
                cells = dict(zip(header, r))
                rows.append({
                    "address": cells.get("Address", ""), "source": cells.get("Source", "").strip(),
                    "samples": _count(cells.get(SAMPLES)),
                    "stalls": {h[len(STALL_COLUMN):]: _count(v) for h, v in cells.items()
                               if h.startswith(STALL_COLUMN) and "Not Issued" not in h}})
    return kernels


def _address(row: dict) -> int:
    try:
        return int(row["address"], 16)
    except ValueError:
        return 0


def _count(text) -> float:
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return 0.0


def hot_instructions(folder: Path, top: int = HOT) -> str:
    """Markdown: per profile and kernel of every ``*.source.csv`` in ``folder``, its ``top``
    instructions by stall samples, with their share of the kernel's samples and their two
    largest stall reasons."""
    out = []
    for path in sorted(folder.glob("*.source.csv")):
        for name, rows in read_source(path).items():
            total = sum(r["samples"] for r in rows)
            if not total:
                continue
            base = min((_address(r) for r in rows), default=0)
            out += [f"\n### {path.name.removesuffix('.source.csv')}: {name[:60]}\n",
                    f"{len(rows)} instructions, {total:.0f} stall samples; offsets from the "
                    "kernel's first instruction, as cuobjdump prints them.\n",
                    "| offset | instruction | samples % | top stalls (samples %) |",
                    "|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: -r["samples"])[:top]:
                reasons = sorted(r["stalls"].items(), key=lambda kv: -kv[1])[:2]
                why = ", ".join(f"{k} {100 * v / total:.1f}" for k, v in reasons
                                if v >= total / 1000)
                text = r["source"].replace("|", "\\|")[:70]
                share = 100 * r["samples"] / total
                out.append(f"| +{_address(r) - base:#x} | `{text}` | {share:.1f} | {why} |")
    return "\n".join(out) + ("\n" if out else "")
