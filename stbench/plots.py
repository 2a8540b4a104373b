"""Plots of a sweep's rows (matplotlib, Agg): pure functions of the DataFrame ``report.load``
returns, each writing one PNG and returning its path.

- ``time_vs_n``: median time vs N, log-log, one panel per layout, one line per backend / peer,
  the fitted exponent a of time ~ N^a in the legend (least squares on log-log, all N measured)
  where the line has at least ``MIN_FIT_POINTS`` distinct N, marked "1 rep" when a point was
  timed once;
- ``memory_vs_n``: measured footprint (peak during the call + inputs + plan) vs N per backend,
  the analytic kernel model (``stbench.memory.kernel_memory_bytes``' formula) and the dense
  reference's materialised memory (``dense_memory_bytes``), with the GPU's capacity when known;
- ``tflops_vs_density``: TFLOP/s (shared numerator: allowed pairs) vs token density;
- ``scaling_vs_n``: for a run at one fixed batch (the ``fixed_batch`` preset), time and extra
  memory against N, log-log, per mode: each backend's median time and its extra memory
  (``workspace_bytes``: the peak beyond inputs, outputs and gradients) as solid lines, its
  per-layout structures (``structure_bytes``: our plan, FlexAttention's BlockMask) dashed, each
  with the slope a of y ~ N^a fitted when it has ``MIN_FIT_POINTS`` points, beside the analytic
  dense curves: the materialised attention's extra memory (``memory.dense_memory_bytes``) and
  dense causal attention's FLOPs at the GPU's measured bf16 matmul rate (``DENSE_TFLOPS``), the
  least time a dense kernel could take.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MODE_TITLES = {"fwd": "forward", "fwd+bwd": "forward + backward"}
LSE_ITEMSIZE = 4  # fp32 row statistics (LSE, delta), as in stbench.memory
DPI = 110
# Distinct N a time exponent is fitted on: through two or three noisy points the slope follows
# the noise and the fixed per-call overhead of small N (a CPU run gave "N^-4.80" from two),
# not the scaling; four points spanning 8x in N at least show a trend.
MIN_FIT_POINTS = 4
MIN_SCALING_POINTS = 3  # scaling_vs_n draws only when some backend has this many N
# bf16 matmul rate per GPU model (TFLOP/s), 8192^3, measured (stbench/regress/calibrate.py)
DENSE_TFLOPS = {"NVIDIA H200": 709.0}


def backend_colors(df: pd.DataFrame) -> dict:
    """One colour per backend, the same in every panel and plot."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {b: cycle[i % len(cycle)] for i, b in enumerate(sorted(df["backend"].unique()))}


def _log_axes(ax, xbase: int = 10) -> None:
    """Log-log axes; x labels on major ticks only (minor x labels overlap), y as matplotlib
    chooses (minor labels where the span is under a decade, so every panel has numbers)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _file_mode(mode: str) -> str:
    return mode.replace("+", "_")


def fit_exponent(ns, ms, min_points: int = MIN_FIT_POINTS) -> float | None:
    """a in ms ~ N^a by least squares on log-log (None with fewer than ``min_points`` distinct
    N: see MIN_FIT_POINTS)."""
    ns, ms = np.asarray(ns, dtype=float), np.asarray(ms, dtype=float)
    ok = (ns > 0) & (ms > 0)
    if len(set(ns[ok])) < max(2, min_points):
        return None
    return float(np.polyfit(np.log(ns[ok]), np.log(ms[ok]), 1)[0])


def exponent_label(backend: str, ns, ms, reps) -> str:
    """The legend entry of a time-vs-N line: the backend and its fitted exponent, where there
    are enough points (``fit_exponent``), marked '1 rep' when a point was timed once."""
    a = fit_exponent(ns, ms)
    if a is None:
        return backend
    once = ", 1 rep" if any(r == 1 for r in reps) else ""
    return f"{backend} (N^{a:.2f}{once})"


def _grid(n: int):
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _problem_text(df: pd.DataFrame) -> str:
    parts = []
    for col, name in (("heads", "H"), ("head_dim", "D"), ("dtype", "")):
        vals = sorted(df[col].dropna().unique())
        if len(vals) == 1:
            parts.append(f"{name}={vals[0]}" if name else str(vals[0]))
    tokens = sorted((df["batch"] * df["n_ctx"]).dropna().unique())
    if len(tokens) == 1:
        parts.append(f"B x N = {int(tokens[0])}")
    return ", ".join(parts)


def time_vs_n(df: pd.DataFrame, mode: str, out_dir) -> Path | None:
    ok = df[(df.status == "ok") & (df["mode"] == mode) & df.median_ms.notna()]
    if ok.empty:
        return None
    layouts = list(dict.fromkeys(ok["layout"]))
    colors = backend_colors(df)
    fig, axes = _grid(len(layouts))
    for ax, lay in zip(axes, layouts):
        sub = ok[ok["layout"] == lay]
        for backend, g in sub.groupby("backend", sort=True):
            g = g.sort_values("n_ctx")
            label = exponent_label(backend, g.n_ctx, g.median_ms, g.reps)
            ax.plot(g.n_ctx, g.median_ms, marker="o", label=label, color=colors[backend])
        _log_axes(ax, 2)
        ax.set_xlabel("sequence length N (tokens)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{lay}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Time vs N, {MODE_TITLES.get(mode, mode)} ({_problem_text(ok)})")
    fig.tight_layout()
    path = Path(out_dir) / f"time_vs_n_{_file_mode(mode)}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def kernel_model_bytes(row) -> float | None:
    """``stbench.memory.kernel_memory_bytes``' formula from a row's fields: fwd 4T + R + P,
    fwd+bwd 8T + 2R + P (T = B H N D e, R = B H N 4, P = the plan's bytes)."""
    e = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}.get(row["dtype"])
    if e is None:
        return None
    t = row["batch"] * row["heads"] * row["n_ctx"] * row["head_dim"] * e
    r = row["batch"] * row["heads"] * row["n_ctx"] * LSE_ITEMSIZE
    p = row["plan_bytes"] if pd.notna(row.get("plan_bytes")) else 0
    return (4 * t + r + p) if row["mode"] == "fwd" else (8 * t + 2 * r + p)


def dense_wall_bytes(row) -> float | None:
    """The materialised dense attention's memory (inputs and outputs included), or None."""
    try:
        import torch

        from stbench import memory
    except ImportError:
        return None
    try:
        return memory.dense_memory_bytes(
            int(row["n_ctx"]), int(row["heads"]), int(row["batch"]),
            getattr(torch, row["dtype"]), row["mode"], chunked=False,
            head_dim=int(row["head_dim"]))
    except (AttributeError, ValueError, TypeError):
        return None


def memory_vs_n(df: pd.DataFrame, mode: str, out_dir, gpu_bytes: float | None = None):
    sub = df[(df["mode"] == mode) & df["token_density"].notna()]
    if sub.empty:
        return None
    layouts = list(dict.fromkeys(sub["layout"]))
    colors = backend_colors(df)
    fig, axes = _grid(len(layouts))
    measured_any = False
    for ax, lay in zip(axes, layouts):
        s = sub[sub["layout"] == lay]
        ok = s[(s.status == "ok") & s.peak_bytes.notna()]
        for backend, g in ok.groupby("backend", sort=True):
            g = g.sort_values("n_ctx")
            total = g.peak_bytes + g.inputs_bytes.fillna(0) + g.plan_bytes.fillna(0)
            ax.plot(g.n_ctx, total / 2**20, marker="o", label=f"{backend} (measured)",
                    color=colors[backend])
            measured_any = True
        one = s.drop_duplicates("n_ctx").sort_values("n_ctx")
        model = [kernel_model_bytes(r) for _, r in one.iterrows()]
        if any(m is not None for m in model):
            ax.plot(one.n_ctx, [m / 2**20 if m else np.nan for m in model], "k--",
                    label="sparse kernel model")
        wall = [dense_wall_bytes(r) for _, r in one.iterrows()]
        if any(w is not None for w in wall):
            ax.plot(one.n_ctx, [w / 2**20 if w else np.nan for w in wall], "r:",
                    label="dense, materialised")
        if gpu_bytes:
            ax.axhline(gpu_bytes / 2**20, color="gray", lw=1, label="GPU memory")
        _log_axes(ax, 2)
        ax.set_xlabel("sequence length N (tokens)")
        ax.set_ylabel("memory (MiB)")
        ax.set_title(lay)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    note = "" if measured_any else " — no measured peaks (CPU run): models only"
    fig.suptitle(f"Memory vs N, {MODE_TITLES.get(mode, mode)} ({_problem_text(sub)}){note}")
    fig.tight_layout()
    path = Path(out_dir) / f"memory_vs_n_{_file_mode(mode)}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def tflops_vs_density(df: pd.DataFrame, out_dir) -> Path | None:
    ok = df[(df.status == "ok") & df.tflops.notna() & df.token_density.notna()]
    if ok.empty:
        return None
    modes = list(dict.fromkeys(ok["mode"]))
    colors = backend_colors(df)
    fig, axes = _grid(len(modes))
    for ax, mode in zip(axes, modes):
        s = ok[ok["mode"] == mode]
        for backend, g in s.groupby("backend", sort=True):
            ax.scatter(g.token_density, g.tflops, label=backend, s=18, color=colors[backend])
        _log_axes(ax)
        ax.set_xlabel("token density (allowed pairs / H N^2)")
        ax.set_ylabel("TFLOP/s (allowed-pair FLOPs / median time)")
        ax.set_title(MODE_TITLES.get(mode, mode))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Throughput vs density ({_problem_text(ok)})")
    fig.tight_layout()
    path = Path(out_dir) / "tflops_vs_density.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- fixed batch
def fixed_batch(df: pd.DataFrame) -> bool:
    """True for rows at one batch, problem shape and dtype whose ok rows reach
    ``MIN_SCALING_POINTS`` values of N for some backend (what ``scaling_vs_n`` needs)."""
    ok = df[(df.status == "ok") & df.median_ms.notna()]
    if ok.empty or any(df[c].nunique() > 1 for c in ("batch", "heads", "head_dim", "dtype")):
        return False
    return int(ok.groupby(["backend", "mode"]).n_ctx.nunique().max()) >= MIN_SCALING_POINTS


def _slope_label(name: str, ns, ys) -> str:
    a = fit_exponent(ns, ys, MIN_FIT_POINTS)
    return name + (f" (N^{a:.2f})" if a is not None else "")


def dense_curves(row, ns) -> tuple[list, list]:
    """(seconds, extra bytes) of dense causal attention at each N of ``ns`` for ``row``'s
    batch, heads, head dim, dtype and mode: its FLOPs at ``DENSE_TFLOPS`` of the row's GPU
    (None where the GPU is not in the table) and the materialised attention's memory beyond
    inputs and outputs (``memory.dense_memory_bytes``)."""
    import torch

    from stbench import memory, timing

    rate = DENSE_TFLOPS.get((row["env"] or {}).get("gpu"))
    factor = timing.FWD_BWD_FACTOR if row["mode"] == "fwd+bwd" else 1.0
    per_pair = timing.FLOPS_PER_PAIR_PER_DIM * row["batch"] * row["head_dim"] * factor
    secs = [per_pair * row["heads"] * n * (n + 1) / 2 / (rate * 1e12) if rate else None
            for n in ns]
    extra = [memory.dense_memory_bytes(int(n), int(row["heads"]), int(row["batch"]),
                                       getattr(torch, row["dtype"]), row["mode"])
             for n in ns]
    return secs, extra


def scaling_vs_n(df: pd.DataFrame, out_dir) -> Path | None:
    """Time and extra memory against N at a fixed batch (module doc); None when the rows are
    not such a run (``fixed_batch``)."""
    if not fixed_batch(df):
        return None
    ok = df[(df.status == "ok") & df.median_ms.notna()]
    modes = [m for m in MODE_TITLES if m in set(ok["mode"])]
    colors = backend_colors(df)
    fig, axes = plt.subplots(2, len(modes), figsize=(6.2 * len(modes), 8.6), squeeze=False)
    for col, mode in enumerate(modes):
        sub = ok[ok["mode"] == mode].sort_values("n_ctx")
        t_ax, m_ax = axes[0][col], axes[1][col]
        for backend, g in sub.groupby("backend", sort=True):
            c = colors[backend]
            t_ax.plot(g.n_ctx, g.median_ms, "o-", color=c,
                      label=_slope_label(backend, g.n_ctx, g.median_ms))
            w = g[g.workspace_bytes.notna()]
            if not w.empty:
                m_ax.plot(w.n_ctx, w.workspace_bytes / 2**20, "o-", color=c,
                          label=_slope_label(f"{backend} extra", w.n_ctx, w.workspace_bytes))
            s = g[g.structure_bytes.notna()] if "structure_bytes" in g else g.iloc[:0]
            if not s.empty:
                m_ax.plot(s.n_ctx, s.structure_bytes / 2**20, "s--", color=c, alpha=0.7,
                          label=_slope_label(f"{backend} structures", s.n_ctx,
                                             s.structure_bytes))
        ns = sorted(set(sub.n_ctx))
        secs, extra = dense_curves(sub.iloc[0], ns)
        if any(x is not None for x in secs):
            t_ax.plot(ns, [x * 1e3 if x else np.nan for x in secs], "k:",
                      label="dense causal at the GPU's matmul rate (N^2)")
        if any(x is not None for x in extra):
            m_ax.plot(ns, [x / 2**20 if x else np.nan for x in extra], "r:",
                      label="dense, materialised (N^2)")
        for ax, ylabel in ((t_ax, "median time (ms)"), (m_ax, "memory (MiB)")):
            _log_axes(ax, 2)
            ax.set_xlabel("sequence length N (tokens)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        t_ax.set_title(f"time, {MODE_TITLES[mode]}")
        m_ax.set_title(f"extra memory (solid) and structures (dashed), {MODE_TITLES[mode]}")
    batch = int(ok["batch"].iloc[0])
    fig.suptitle(f"Against N at a fixed batch B = {batch} ({_problem_text(ok)}, "
                 f"{', '.join(dict.fromkeys(ok['layout']))})")
    fig.tight_layout()
    path = Path(out_dir) / "scaling_vs_n.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def slope_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, backend) of a fixed-batch run: the fitted exponents of time, extra memory and
    structures against N (NaN with fewer than ``MIN_FIT_POINTS`` N), and the N range."""
    if not fixed_batch(df):
        return pd.DataFrame()
    ok = df[(df.status == "ok") & df.median_ms.notna()]
    recs = []
    for (mode, backend), g in ok.groupby(["mode", "backend"], sort=True):
        def slope(col):
            v = g[g[col].notna()] if col in g else g.iloc[:0]
            a = fit_exponent(v.n_ctx, v[col], MIN_FIT_POINTS) if not v.empty else None
            return np.nan if a is None else a

        recs.append({"mode": mode, "backend": backend, "N from": int(g.n_ctx.min()),
                     "N to": int(g.n_ctx.max()), "time slope": slope("median_ms"),
                     "extra memory slope": slope("workspace_bytes"),
                     "structures slope": slope("structure_bytes")})
    return pd.DataFrame(recs).set_index(["mode", "backend"])
