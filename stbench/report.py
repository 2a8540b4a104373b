"""Reports: REPORT.md, tables and PNGs as pure functions of a results folder's JSONL files.

``stbench report DIR`` reads ``DIR/*.jsonl`` (sweep rows, tuning candidates) and, if present,
``DIR/tune_eval.jsonl`` (TARGETS.md item 5), and writes into ``DIR`` (or ``--out``):

- ``REPORT.md``: the environment; row counts by backend and status; per mode, median time per
  (layout, N) and backend; the speedup over FlexAttention per (layout, N) (over the dense
  reference when the run has no FlexAttention rows, e.g. on a CPU, and saying so); the speedup
  over the fastest peer that ran each (layout, N) (fa4, flex_flash, flex, sdpa: DESIGN.md's
  measure), naming it; the
  autotuner's chosen configs and why candidates were rejected; item 5; failures with reasons;
- the plots of ``stbench.plots`` (time vs N, memory vs N, TFLOP/s vs density).

When a (kind, backend, layout, N, B, H, D, dtype, mode[, config]) was measured more than once
(a resumed sweep), the last row counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from stbench import backends, plots, results

REPORT_FILE = "REPORT.md"
PEER = "flex"  # the speedup denominator TARGETS.md uses
FALLBACK_BASELINE = "dense"
ERROR_CHARS = 160


def load(folder) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(sweep rows, tuning rows, item-5 records) of a results folder (or one JSONL file)."""
    rows = results.read_folder(folder)
    evals = []
    eval_path = Path(folder) / "tune_eval.jsonl"
    if Path(folder).is_dir() and eval_path.exists():
        from stbench.tuning import evaluate

        evals = evaluate.read(eval_path)
    if not rows and not evals:
        raise results.ResultsError(f"{folder}: no result rows (run `stbench sweep` or "
                                   "`stbench tune --evaluate` first)")
    df = pd.DataFrame([r.to_dict() for r in rows], columns=list(results.ResultRow.__annotations__))
    df["key"] = [r.key() for r in rows]
    df = df.drop_duplicates("key", keep="last")
    return (df[df.kind == "sweep"].reset_index(drop=True),
            df[df.kind == "tune"].reset_index(drop=True), evals)


# ----------------------------------------------------------------------------- markdown
def md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table of a DataFrame (index included when it is named)."""
    if df.empty:
        return "_(none)_\n"
    d = df.reset_index() if any(n is not None for n in df.index.names) else df
    cols = [str(c) for c in d.columns]

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    envs = {json.dumps(e, sort_keys=True) for e in df["env"]}
    recs = [json.loads(e) for e in sorted(envs)]
    return pd.DataFrame(recs).T.rename(columns=lambda i: f"env {i + 1}").rename_axis("field")


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    return pd.crosstab(df.backend, df.status).rename_axis(index="backend", columns=None)


def time_table(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    ok = df[(df.status == "ok") & (df["mode"] == mode)]
    if ok.empty:
        return pd.DataFrame()
    t = ok.pivot_table(index=["layout", "n_ctx"], columns="backend", values="median_ms",
                       aggfunc="last")
    return t.rename_axis(columns=None)


def speedup_table(df: pd.DataFrame, mode: str) -> tuple[pd.DataFrame, str | None]:
    """baseline_ms / backend_ms per (layout, N): > 1 means faster than the baseline
    (FlexAttention, else the dense reference)."""
    t = time_table(df, mode)
    if t.empty:
        return t, None
    base = PEER if PEER in t.columns else (FALLBACK_BASELINE if FALLBACK_BASELINE in t.columns
                                           else None)
    if base is None:
        return pd.DataFrame(), None
    sp = t.drop(columns=[base]).rdiv(t[base], axis=0)
    return sp.dropna(how="all"), base


def _is_peer(name: str) -> bool:
    info = backends.REGISTRY.get(name)
    return info is not None and info.peer


def fastest_peer_table(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Per (layout, N): the fastest peer that ran it ('fastest peer', 'peer ms') and each of our
    backends' speedup over it (peer ms / backend ms; > 1: faster than every peer)."""
    t = time_table(df, mode)
    peers = [c for c in t.columns if _is_peer(c)]
    ours = [c for c in t.columns if c not in peers and c != FALLBACK_BASELINE]
    if t.empty or not peers or not ours:
        return pd.DataFrame()
    t = t[t[peers].notna().any(axis=1)]
    best = t[peers].min(axis=1)
    out = t[ours].rdiv(best, axis=0)
    out.insert(0, "peer ms", best)
    out.insert(0, "fastest peer", t[peers].idxmin(axis=1))
    return out.dropna(how="all", subset=ours)


def tuned_table(df: pd.DataFrame) -> pd.DataFrame:
    t = df[df.tuned.fillna(False).astype(bool) & (df.status == "ok")]
    if t.empty:
        return pd.DataFrame()
    out = t[["layout", "n_ctx", "mode", "backend", "block", "median_ms"]].copy()
    out["config"] = [json.dumps(c, sort_keys=True) for c in t["config"]]
    return out.sort_values(["layout", "n_ctx", "mode", "backend"])


def rejection_table(tune: pd.DataFrame) -> pd.DataFrame:
    """Tuning candidates per backend and outcome (constraint, compile_error, incorrect, ...)."""
    if tune.empty:
        return pd.DataFrame()
    reason = tune.status.where(~tune.error.fillna("").str.startswith("constraint"), "constraint")
    return pd.crosstab(tune.backend, reason).rename_axis(index="backend", columns=None)


def eval_table(evals: list[dict]) -> pd.DataFrame:
    if not evals:
        return pd.DataFrame()
    recs = []
    for e in evals:
        recs.append({
            "problem": e.get("problem"), "candidates": e.get("candidates"),
            "evaluated (pick)": e.get("tune_evaluated"), "best ms": (e.get("best") or {}).get(
                "median_ms"), "pick ms": (e.get("pick") or {}).get("median_ms"),
            "pick / best": e.get("ratio"), "tune s": e.get("tune_s"),
            "exhaustive s": e.get("exhaustive_s"), "lookup warm ms": e.get("lookup_warm_ms"),
            "lookup cold ms": e.get("lookup_cold_ms"),
        })
    return pd.DataFrame(recs)


def failure_table(df: pd.DataFrame) -> pd.DataFrame:
    bad = df[~df.status.isin(["ok", "unsupported"])]
    if bad.empty:
        return pd.DataFrame()
    out = bad[["layout", "n_ctx", "mode", "backend", "status"]].copy()
    out["error"] = bad.error.fillna("").str.slice(-ERROR_CHARS)
    return out


def unsupported_table(df: pd.DataFrame) -> pd.DataFrame:
    u = df[df.status == "unsupported"].copy()
    if u.empty:
        return pd.DataFrame()
    u["reason"] = u.error.fillna("").str.slice(0, ERROR_CHARS)
    return (u.groupby(["backend", "reason"]).size().rename("rows").reset_index()
            .sort_values(["backend", "rows"], ascending=[True, False]))


# ----------------------------------------------------------------------------- the report
def write_report(folder, out_dir=None) -> Path:
    """Write REPORT.md and the PNGs for the results in ``folder``; returns REPORT.md's path."""
    df, tune, evals = load(folder)
    out_dir = Path(out_dir) if out_dir is not None else Path(folder)
    if out_dir.is_file():
        out_dir = out_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:  # only the tuner's item-5 evaluation
        text = ["# stbench report", "", "## Environment", "",
                md_table(pd.DataFrame([e.get("env", {}) for e in evals[:1]]).T
                         .rename_axis("field")),
                "## Autotuner vs exhaustive search (TARGETS.md item 5)", "",
                md_table(eval_table(evals))]
        path = out_dir / REPORT_FILE
        path.write_text("\n".join(text), encoding="utf-8")
        return path
    modes = [m for m in ("fwd", "fwd+bwd") if m in set(df["mode"])]
    gpu_bytes = next((e.get("gpu_memory_bytes") for e in df["env"] if e.get("gpu_memory_bytes")),
                     None)
    pngs = []
    for mode in modes:
        pngs += [plots.time_vs_n(df, mode, out_dir), plots.memory_vs_n(df, mode, out_dir,
                                                                       gpu_bytes)]
    pngs.append(plots.tflops_vs_density(df, out_dir))
    pngs = [p for p in pngs if p is not None]

    md = ["# stbench report", ""]
    md += [f"Rows: {len(df)} sweep rows ({(df.status == 'ok').sum()} ok), {len(tune)} tuning "
           f"candidates. Times are medians over repetitions (ms); TFLOP/s use the allowed-pair "
           "FLOPs shared by all backends.", ""]
    md += ["## Environment", "", md_table(environment_table(df))]
    md += ["## Rows by backend and status", "", md_table(status_table(df))]
    for mode in modes:
        title = plots.MODE_TITLES.get(mode, mode)
        md += [f"## Median time (ms), {title}", "", md_table(time_table(df, mode))]
        sp, base = speedup_table(df, mode)
        if base == PEER:
            md += [f"## Speedup over FlexAttention, {title}", "",
                   "FlexAttention's median time / the backend's (> 1: faster than Flex).", ""]
        elif base is not None:
            md += [f"## Speedup over the dense reference, {title}", "",
                   "No FlexAttention rows in this run (it needs a GPU): the dense reference's "
                   "median time / the backend's.", ""]
        if base is not None:
            md += [md_table(sp, ".2f")]
        fp = fastest_peer_table(df, mode)
        if not fp.empty:
            md += [f"## Speedup over the fastest peer, {title}", "",
                   "Per row, the fastest peer that ran it in this run (of "
                   f"{', '.join(n for n in backends.names() if _is_peer(n))}) and its median "
                   "time / each backend's (> 1: faster than every peer).", "",
                   md_table(fp, ".3g")]
    tt = tuned_table(df)
    if not tt.empty:
        md += ["## Autotuner's choices", "", md_table(tt)]
    rt = rejection_table(tune)
    if not rt.empty:
        md += ["## Tuning candidates by outcome", "", md_table(rt)]
    et = eval_table(evals)
    if not et.empty:
        md += ["## Autotuner vs exhaustive search (TARGETS.md item 5)", "", md_table(et)]
    md += ["## Failures", "", md_table(failure_table(df))]
    md += ["## Unsupported combinations", "", md_table(unsupported_table(df))]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(md), encoding="utf-8")
    return path
