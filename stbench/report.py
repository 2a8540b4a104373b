"""Reports: REPORT.md, tables and PNGs as pure functions of a results folder's JSONL files.

``stbench report DIR`` reads ``DIR/*.jsonl`` (sweep rows, tuning candidates), if present
``DIR/tune_eval.jsonl`` (the autotuner against exhaustive search) and ``DIR/manifest.json``
(stbench.manifest), and writes into ``DIR`` (or ``--out``):

- ``REPORT.md``: what ran (the manifest); a banner when the times are not kernel timings (no
  GPU in the run's environment, or Triton under its interpreter) and how many rows were timed
  with a single repetition; the environment; row counts by backend and status;
  per mode, median time per (layout, N) and backend; our fastest backend against the fastest
  peer per (layout, N), and each backend's speedup over the fastest peer (over the dense
  reference when the run has no peer rows, e.g. on a CPU, and saying so); the autotuner's
  chosen configs and why candidates were rejected; the tuner against exhaustive search;
  failures with reasons;
- the plots of ``stbench.plots`` (time vs N, memory vs N, TFLOP/s vs density) and, for a run at
  one fixed batch (the ``fixed_batch`` preset), time and extra memory against N with fitted
  slopes beside the analytic dense curves, and a table of those slopes; a run sharded over
  several devices or hosts gets a table of rows per host and device.

"Ours" are the registry's backends that are neither peers nor the reference; "peers" are those
it marks ``peer`` (``stbench.backends``). When a (kind, backend, layout, N, B, H, D, dtype,
mode[, config], block) was measured more than once (a resumed sweep, or files of several runs),
the row with the latest timestamp counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from stbench import manifest, plots, results

REPORT_FILE = "REPORT.md"
FALLBACK_BASELINE = "dense"  # the speedup denominator of a run without peers (a CPU run)
ERROR_CHARS = 160


def load(folder, skip_bad_lines: bool = False
         ) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(sweep rows, tuning rows, item-5 records) of a results folder (or one JSONL file);
    ``skip_bad_lines``: skip unreadable lines with a warning (``results.read_rows``)."""
    rows = results.read_folder(folder, skip_bad_lines=skip_bad_lines)
    evals = []
    eval_path = Path(folder) / "tune_eval.jsonl"
    if Path(folder).is_dir() and eval_path.exists():
        from stbench.tuning import evaluate

        evals = evaluate.read(eval_path)
    if not rows and not evals:
        raise results.ResultsError(f"{folder}: no result rows (run `stbench sweep` or "
                                   "`stbench tune --evaluate` first)")
    df = pd.DataFrame([r.to_dict() for r in rows], columns=list(results.ResultRow.__annotations__))
    df["key"] = [f"{r.key()}|block={r.block}" for r in rows]
    df = df.sort_values("timestamp", kind="stable").drop_duplicates("key", keep="last")
    return (df[df.kind == "sweep"].reset_index(drop=True),
            df[df.kind == "tune"].reset_index(drop=True), evals)


def timing_caveat(envs, reps=()) -> list[str]:
    """Sentences saying what the times are not, from the rows' environments and repetition
    counts: measured on a CPU (no GPU in the environment) or with Triton under its interpreter,
    they are not kernel timings; rows timed once are one sample, not a median. Empty when
    neither applies."""
    envs = [e for e in envs if isinstance(e, dict)]
    where = []
    if any(not e.get("gpu") for e in envs):
        where.append("on a CPU")
    if any(e.get("triton_interpret") for e in envs):
        where.append("under Triton's interpreter")
    lines = []
    if where:
        lines.append(f"Measured {' and '.join(where)}: not kernel timings. These times show that "
                     "the code runs and agrees with the dense reference; a GPU run measures the "
                     "kernels (docs/gpu.md).")
    reps = [r for r in reps if r is not None and not pd.isna(r)]
    once = sum(1 for r in reps if r == 1)
    if once:
        lines.append(f"{once} of {len(reps)} timed rows were measured with a single repetition: "
                     "their times are one sample, not a median.")
    return lines


def _banner(lines: list[str]) -> list[str]:
    """Sentences as one Markdown block quote (and a blank line), or nothing."""
    return ["\n>\n".join(f"> **{x}**" if i == 0 else f"> {x}" for i, x in enumerate(lines)),
            ""] if lines else []


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per sweep row: mode, layout, N, backend, block, status, median ms, TFLOP/s, peak
    bytes and repetitions (``stbench report DIR --format``)."""
    cols = ["mode", "layout", "n_ctx", "backend", "block", "status", "median_ms", "tflops",
            "peak_bytes", "reps"]
    out = df[cols].astype({c: "Int64" for c in ("n_ctx", "block", "peak_bytes", "reps")})
    return out.sort_values(["mode", "layout", "n_ctx", "backend"]).reset_index(drop=True)


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


def device_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per (host, device) when a run used more than one (a sharded sweep); else empty."""
    if "device" not in df or df.device.isna().all():
        return pd.DataFrame()
    where = df[["host", "device"]].fillna("—")
    if len(where.drop_duplicates()) < 2:
        return pd.DataFrame()
    return where.value_counts().rename("rows").sort_index().to_frame()


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    return pd.crosstab(df.backend, df.status).rename_axis(index="backend", columns=None)


def time_table(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    ok = df[(df.status == "ok") & (df["mode"] == mode)]
    if ok.empty:
        return pd.DataFrame()
    t = ok.pivot_table(index=["layout", "n_ctx"], columns="backend", values="median_ms",
                       aggfunc="last")
    return t.rename_axis(columns=None)


def backend_roles(names) -> tuple[list[str], list[str]]:
    """(ours, peers) among backend names: the registry's peers, and its backends that are
    neither peers nor the reference (names it does not know are neither)."""
    from stbench import backends

    infos = [backends.REGISTRY.get(n) for n in names]
    ours = [i.name for i in infos if i is not None and not i.peer and not i.reference]
    return ours, [i.name for i in infos if i is not None and i.peer]


def _fastest(ok: pd.DataFrame, names) -> pd.DataFrame:
    """Per (layout, N): the backend of ``names`` with the lowest median time, and that time."""
    sub = ok[ok.backend.isin(list(names))]
    if sub.empty:
        return pd.DataFrame(columns=["backend", "median_ms"])
    best = sub.loc[sub.groupby(["layout", "n_ctx"]).median_ms.idxmin()]
    return best.set_index(["layout", "n_ctx"])[["backend", "median_ms"]]


def side_by_side(df: pd.DataFrame, mode: str, ours=None, against=None) -> pd.DataFrame:
    """Per (layout, N) of ``mode``: the fastest of ``ours`` and the fastest of ``against`` among
    the ok sweep rows, and speedup = against's median / ours' (> 1: ours is faster). Defaults:
    ours = our backends, against = the peers (``backend_roles``). Only (layout, N) where both
    sides ran; columns ours, ours_ms, against, against_ms, speedup."""
    ok = df[(df.status == "ok") & (df["mode"] == mode) & (df.kind == "sweep")]
    default_ours, default_peers = backend_roles(sorted(set(ok.backend)))
    a = _fastest(ok, ours or default_ours)
    b = _fastest(ok, against or default_peers)
    if a.empty or b.empty:
        return pd.DataFrame()
    t = pd.merge(a, b, how="inner", left_index=True, right_index=True, suffixes=("_a", "_b"))
    t.columns = ["ours", "ours_ms", "against", "against_ms"]
    t["speedup"] = t.against_ms / t.ours_ms
    return t.sort_index()


def speedup_table(df: pd.DataFrame, mode: str) -> tuple[pd.DataFrame, str | None]:
    """baseline_ms / backend_ms per (layout, N) and backend: > 1 means faster than the
    baseline, the fastest peer of that (layout, N) ("peer"), else the dense reference."""
    t = time_table(df, mode)
    if t.empty:
        return t, None
    _, peers = backend_roles(t.columns)
    if peers:
        base, base_ms = "peer", t[peers].min(axis=1)
        t = t.drop(columns=peers)
    elif FALLBACK_BASELINE in t.columns:
        base, base_ms = FALLBACK_BASELINE, t[FALLBACK_BASELINE]
        t = t.drop(columns=[FALLBACK_BASELINE])
    else:
        return pd.DataFrame(), None
    return t.rdiv(base_ms, axis=0).dropna(how="all"), base


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


def folder_manifest(folder) -> manifest.Manifest | None:
    """The manifest of a results folder, None when it has none (a bad one is an error)."""
    folder = Path(folder)
    if folder.is_file() or not manifest.path_of(folder).is_file():
        return None
    return manifest.read(folder)


def manifest_lines(m: manifest.Manifest | None) -> list[str]:
    """What ran, from a folder's manifest."""
    if m is None:
        return []
    took = f", {m.duration_s:.0f} s" if m.duration_s is not None else ""
    lines = [m.description, "", f"Command: `{m.command}`", "",
             f"Code: commit {m.commit or 'unknown'}; started {m.date}{took}.", ""]
    for part in m.parts:
        lines += [f"- {part['description']}: `{part['command']}` (commit {part['commit']}, "
                  f"{part['date']}; {', '.join(part['files'])})"]
    if m.parts:
        lines.append("")
    if m.notes:
        lines += [m.notes, ""]
    return lines


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
def write_report(folder, out_dir=None, skip_bad_lines: bool = False) -> Path:
    """Write REPORT.md and the PNGs for the results in ``folder``; returns REPORT.md's path."""
    df, tune, evals = load(folder, skip_bad_lines)
    out_dir = Path(out_dir) if out_dir is not None else Path(folder)
    if out_dir.is_file():
        out_dir = out_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:  # only the tuner's evaluation against exhaustive search
        text = ["# stbench report", "", *manifest_lines(folder_manifest(folder)),
                *_banner(timing_caveat([e.get("env") for e in evals])),
                "## Environment", "",
                md_table(pd.DataFrame([e.get("env", {}) for e in evals[:1]]).T
                         .rename_axis("field")),
                "## Autotuner against exhaustive search", "", md_table(eval_table(evals))]
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
    pngs.append(plots.scaling_vs_n(df, out_dir))
    pngs = [p for p in pngs if p is not None]

    m = folder_manifest(folder)
    compare = m.compare if m is not None else {}
    md = ["# stbench report", "", *manifest_lines(m)]
    md += _banner(timing_caveat(df["env"], df.loc[df.status == "ok", "reps"]))
    md += [f"Rows: {len(df)} sweep rows ({(df.status == 'ok').sum()} ok), {len(tune)} tuning "
           f"candidates. Times are medians over repetitions (ms); TFLOP/s use the allowed-pair "
           "FLOPs shared by all backends.", ""]
    md += ["## Environment", "", md_table(environment_table(df))]
    dt = device_table(df)
    if not dt.empty:
        md += ["## Rows by host and device", "", md_table(dt)]
    md += ["## Rows by backend and status", "", md_table(status_table(df))]
    for mode in modes:
        title = plots.MODE_TITLES.get(mode, mode)
        md += [f"## Median time (ms), {title}", "", md_table(time_table(df, mode))]
        sbs = side_by_side(df, mode, compare.get("ours"), compare.get("against"))
        if not sbs.empty:
            ours = " / ".join(compare.get("ours", [])) or "our fastest backend"
            against = " / ".join(compare.get("against", [])) or "the fastest peer"
            md += [f"## Side by side: {ours} against {against}, {title}", "",
                   f"Median ms; speedup = {against}'s time / {ours}'s (> 1: {ours} is faster).",
                   "", md_table(sbs, ".4g")]
        sp, base = speedup_table(df, mode)
        if base == "peer":
            md += [f"## Speedup over the fastest peer, {title}", "",
                   "The fastest peer's median time / the backend's (> 1: faster).", ""]
        elif base is not None:
            md += [f"## Speedup over the dense reference, {title}", "",
                   "No peer rows in this run (they need a GPU): the dense reference's "
                   "median time / the backend's.", ""]
        if base is not None:
            md += [md_table(sp, ".2f")]
    st = plots.slope_table(df)
    if not st.empty:
        md += ["## Scaling with N at a fixed batch", "",
               f"Fitted exponent a of y ~ N^a (least squares on log-log, at least "
               f"{plots.MIN_FIT_POINTS} N): time, extra memory (the peak beyond inputs, "
               "outputs and gradients) and the per-layout structures kept between calls (our "
               "plan, FlexAttention's BlockMask). Dense attention's time and materialised "
               "memory grow as N^2 at a fixed batch.", "", md_table(st, ".2f")]
    tt = tuned_table(df)
    if not tt.empty:
        md += ["## Autotuner's choices", "", md_table(tt)]
    rt = rejection_table(tune)
    if not rt.empty:
        md += ["## Tuning candidates by outcome", "", md_table(rt)]
    et = eval_table(evals)
    if not et.empty:
        md += ["## Autotuner against exhaustive search", "", md_table(et)]
    md += ["## Failures", "", md_table(failure_table(df))]
    md += ["## Unsupported combinations", "", md_table(unsupported_table(df))]
    md += ["## Plots", "", f"The exponent a of time ~ N^a in a legend is a least-squares fit on "
           f"log-log, given only where a line has at least {plots.MIN_FIT_POINTS} distinct N "
           "(fewer points fit the noise and the fixed overhead of small N, not the scaling); "
           "'1 rep' marks a line with a point timed once.", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(md), encoding="utf-8")
    return path
