"""The sweep runner: N x layouts x backends (peers included) x mode x dtype -> results.jsonl.

``stbench sweep --preset quick --out DIR`` (presets: ``stbench/presets/*.toml``; ``--config
FILE.toml`` for a custom grid, same keys, see ``SweepConfig``). Rows are grouped by
(N, layout, dtype): one layout, one set of seeded inputs and one dense reference per mode serve
every backend of the group, so backends are compared on the same tensors side by side.

Per row (``tuning.measure``): unsupported backends and layouts that cannot exist at that N
become ``unsupported`` rows; the first call is ``prepare_ms``; the output (and for 'fwd+bwd' the
gradients) is checked against the dense reference on batch element 0 — every query row up to
H N^2 = 8 x 16384^2 score entries, 256 seeded rows per head beyond (``tuning.check``; the row's
``check`` says which) — before it is timed; peak memory is measured on CUDA. With ``--tune`` each
(problem, backend) is tuned first (``stbench.autotune``; candidates in ``tune.jsonl``, picks in
``tune.json`` under ``--out``) and the row measures the pick.

``--picks RESULTS.jsonl`` re-measures the (block, config) of each matching ok row of an earlier
sweep instead (a regression check after a kernel change). With ``precompile_workers`` > 0,
kernels are compiled ahead of timing in worker processes (``tuning/precompile.py``).

Robustness: every exception is a row and the sweep goes on; ``--resume`` skips rows already in
``results.jsonl``; ``--max-minutes`` stops cleanly before starting a row past the budget;
``--isolate`` runs the rows in worker subprocesses (``stbench/isolation.py``), so that a row that
crashes (illegal address) or hangs becomes a ``runtime_error`` or ``timeout`` row. Without
``--isolate`` a hung kernel cannot be interrupted and a crash ends the sweep (``--resume``
continues after the rows written). A sweep writes only under ``--out``.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stbench import autotune, backends, layouts, results
from stbench.problems import STANDARD_BLOCK, LayoutSpec, Problem, layout_spec
from stbench.tuning import check, local
from stbench.tuning.measure import (BenchSettings, classify_exception, error_text, make_row,
                                    measure)
from stbench.tuning.precompile import COMPILED_BACKENDS, Job, Precompiler

PRESET_DIR = Path(__file__).resolve().parent / "presets"
WORK_DIR = ".work"
TUNE_CACHE = "tune.json"


class SweepError(ValueError):
    """A sweep configuration or output folder is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class SweepConfig:
    """A grid. ``batch`` = max(1, tokens // N) unless ``batch`` is set. Layout names refer to
    ``problems.LAYOUT_SPECS`` or to ``[layout.NAME]`` tables (builder, block, parameters);
    ``block`` (if set) overrides every spec's block; ``fit_block`` builds a pattern that cannot
    exist at its block at the largest block that fits (the row records the block); ``max_n``
    caps N per backend (the dense reference is quadratic); ``triton_interpret`` runs Triton under
    its interpreter when there is no GPU."""

    name: str
    ns: tuple[int, ...]
    layouts: tuple[LayoutSpec, ...]
    backends: tuple[str, ...]
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    dtypes: tuple[str, ...] = ("bfloat16",)
    tokens: int = 65536
    batch: int | None = None
    heads: int = 8
    head_dim: int = 64
    warmup_ms: float = 25
    rep_ms: float = 100
    flush_l2: bool = True
    min_reps: int = 3
    row_timeout_s: float = 300
    max_n: tuple[tuple[str, int], ...] = ()
    triton_interpret: bool = False
    tune_backends: tuple[str, ...] = ()  # () = every backend of the grid
    tune_strategy: str = "local"
    tune_rep_ms: float = 40
    tune_max_evals: int | None = None  # candidates measured per (problem, backend); None: no cap
    precompile_workers: int = 0  # processes compiling kernels ahead of timing; 0: off
    seed: int = 0
    description: str = ""
    source: dict = field(default_factory=dict, compare=False, repr=False)

    KEYS = ("name", "description", "ns", "layouts", "backends", "modes", "dtypes", "tokens",
            "batch", "heads", "head_dim", "block", "warmup_ms", "rep_ms", "flush_l2",
            "min_reps", "row_timeout_s", "max_n", "triton_interpret", "tune_backends",
            "tune_strategy", "tune_rep_ms", "tune_max_evals", "precompile_workers", "seed",
            "layout", "fit_block")

    @staticmethod
    def from_dict(d: dict, where: str = "sweep config") -> "SweepConfig":
        unknown = sorted(set(d) - set(SweepConfig.KEYS))
        if unknown:
            raise SweepError(
                f"{where}: unknown keys {unknown}; known: {', '.join(SweepConfig.KEYS)}")
        for k in ("ns", "layouts", "backends"):
            if not d.get(k):
                raise SweepError(f"{where}: '{k}' must be a non-empty list")
        defs = d.get("layout", {})
        specs = []
        for name in d["layouts"]:
            if name in defs:
                t = dict(defs[name])
                builder = t.pop("builder", name)
                block = t.pop("block", d.get("block", STANDARD_BLOCK))
                reblock = t.pop("reblock", None)
                specs.append(LayoutSpec(name, builder, block, tuple(sorted(t.items())),
                                        reblock=reblock))
            else:
                s = layout_spec(name)
                if "block" in d:
                    s = replace(s, block=d["block"])
                specs.append(s)
        if d.get("fit_block"):
            specs = [replace(s, fit_block=True) for s in specs]
        for b in d["backends"]:
            backends.info(b)  # UnknownBackend names the registered ones
        workers = d.get("precompile_workers", 0)
        if not isinstance(workers, int) or workers < 0:
            raise SweepError(f"{where}: precompile_workers={workers!r} must be an int >= 0 "
                             "(0: compile on first call; N: N processes compile ahead)")
        kw = {k: d[k] for k in ("name", "tokens", "batch", "heads", "head_dim", "warmup_ms",
                                "rep_ms", "flush_l2", "min_reps", "row_timeout_s",
                                "triton_interpret", "tune_strategy", "tune_rep_ms",
                                "tune_max_evals", "precompile_workers", "seed",
                                "description") if k in d}
        for k in ("modes", "dtypes", "tune_backends"):
            if k in d:
                kw[k] = tuple(d[k])
        try:
            return SweepConfig(
                ns=tuple(int(n) for n in d["ns"]), layouts=tuple(specs),
                backends=tuple(d["backends"]),
                max_n=tuple(sorted((str(k), int(v)) for k, v in d.get("max_n", {}).items())),
                source=dict(d), **kw,
            )
        except TypeError as exc:
            raise SweepError(f"{where}: {exc}") from None

    @staticmethod
    def from_toml(path) -> "SweepConfig":
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SweepError(f"{path}: cannot read the sweep config ({exc})") from None
        d.setdefault("name", path.stem)
        return SweepConfig.from_dict(d, str(path))

    @staticmethod
    def preset(name: str) -> "SweepConfig":
        path = PRESET_DIR / f"{name}.toml"
        if not path.exists():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
            raise SweepError(f"preset {name!r} does not exist: use one of {', '.join(names)} or "
                             "--config FILE.toml")
        return SweepConfig.from_toml(path)

    def with_overrides(self, **changes) -> "SweepConfig":
        """The same grid with some keys replaced (None values ignored), revalidated."""
        d = dict(self.source)
        d.update({k: v for k, v in changes.items() if v is not None})
        return SweepConfig.from_dict(d, f"{self.name} with overrides")

    def batch_for(self, n: int) -> int:
        return self.batch or max(1, self.tokens // n)

    def spec(self, name: str) -> LayoutSpec:
        return next(s for s in self.layouts if s.name == name)

    def problem(self, n, layout_name, dtype, mode) -> Problem:
        return Problem(self.spec(layout_name), n, self.batch_for(n), self.heads, self.head_dim,
                       dtype, mode, self.seed)


@dataclass(frozen=True)
class Group:
    n: int
    layout: str
    dtype: str
    items: tuple[tuple[str, str], ...]  # (mode, backend), in run order


def plan_groups(cfg: SweepConfig) -> list[Group]:
    return [
        Group(n, spec.name, dtype, tuple((m, b) for m in cfg.modes for b in cfg.backends))
        for n in cfg.ns for spec in cfg.layouts for dtype in cfg.dtypes
    ]


def item_key(cfg: SweepConfig, group: Group, mode: str, backend: str) -> str:
    return results.row_key("sweep", backend, group.layout, group.n, cfg.batch_for(group.n),
                           cfg.heads, cfg.head_dim, group.dtype, mode)


def load_picks(path) -> dict:
    """{(backend, layout, N, mode, dtype): (block, config)} of the 'ok' sweep rows of an earlier
    results file: ``--picks`` re-measures exactly those configurations (say, after a kernel
    change) instead of tuning or taking defaults."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"--picks {path}: no such results file (give a results.jsonl)")
    return {(r.backend, r.layout, r.n_ctx, r.mode, r.dtype): (r.block, r.config or None)
            for r in results.read_rows(path) if r.status == "ok" and r.kind == "sweep"}


def pick_key(prob: Problem, backend: str) -> tuple:
    return (backend, prob.layout.name, prob.n_ctx, prob.mode, prob.dtype)


# ----------------------------------------------------------------------------- one group
def run_group(cfg: SweepConfig, group: Group, out_dir: Path, *, device, tune: bool,
              deadline: float | None, on_begin=None, on_end=None, precompiler=None,
              picks: dict | None = None) -> bool:
    """Run a group's items in order, appending each row to results.jsonl; False if stopped by
    the deadline. Inputs and the dense reference are made once per mode, on first need.
    ``precompiler``: a ``tuning.precompile.Precompiler`` the tuner compiles each batch of
    candidates with, side by side, before timing them. ``picks`` (``load_picks``): rows found
    there run that (block, config), untuned."""
    out = out_dir / results.RESULTS_FILE
    device = torch.device(device)
    settings = BenchSettings(cfg.warmup_ms, cfg.rep_ms, cfg.flush_l2, min_reps=cfg.min_reps)
    max_n = dict(cfg.max_n)
    base = cfg.problem(group.n, group.layout, group.dtype, group.items[0][0])
    try:
        layout, layout_error = base.build_layout(), None
    except (layouts.LayoutError, ValueError) as exc:
        layout, layout_error = None, f"layout {base.layout.describe()} at N={group.n}: {exc}"
    state = {}  # mode -> (inputs, reference) or an error row's (status, message)
    fwd_picks = {}  # backend -> (block, config) tuned in 'fwd': 'fwd+bwd' tunes the backward
    for i, (mode, backend) in enumerate(group.items):
        if deadline is not None and time.time() > deadline:
            return False
        if on_begin:
            on_begin(i)
        prob = cfg.problem(group.n, group.layout, group.dtype, mode)
        if layout is None:
            row = make_row(prob, None, backend, "unsupported", block=prob.layout.block,
                           error=layout_error)
        elif backend in max_n and group.n > max_n[backend]:
            row = make_row(prob, layout, backend, "unsupported",
                           error=f"skipped: N={group.n} > max_n[{backend}]={max_n[backend]} "
                           "in this sweep's config")
        elif (why := backends.unavailable_reason(backend, device, prob.torch_dtype,
                                                 layout)) is not None:
            row = make_row(prob, layout, backend, "unsupported", error=why)
        else:
            if mode not in state:
                state.clear()
                _free()
                state[mode] = _prepare_mode(prob, layout, device)
            prepared = state[mode]
            if isinstance(prepared[0], str):  # inputs could not be made
                row = make_row(prob, layout, backend, prepared[0], error=prepared[1])
            else:
                inputs, ref, note = prepared
                row = _measure_backend(cfg, prob, layout, backend, inputs, ref, device,
                                       settings, tune, out_dir, fwd_picks, precompiler,
                                       (picks or {}).get(pick_key(prob, backend)))
                if ref is None and row.check == "skipped":
                    row = replace(row, check=f"skipped: {note}")
        results.append_rows(out, [row])
        if on_end:
            on_end(i, row)
    state.clear()
    _free()
    return True


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prepare_mode(prob, layout, device):
    try:
        inputs = prob.inputs(device)
    except Exception as exc:  # noqa: BLE001 - an OOM making inputs is a data point
        return classify_exception(exc), f"inputs: {error_text(exc)}"
    q, k, v = inputs
    try:
        ref = check.Reference(q, k, v, layout, prob.head_dim ** -0.5, prob.mode, seed=prob.seed)
        return inputs, ref, ""
    except Exception as exc:  # noqa: BLE001 - no reference: rows unchecked, saying why
        return inputs, None, f"dense reference failed: {error_text(exc)[:300]}"


def _measure_backend(cfg, prob, layout, backend, inputs, ref, device, settings, tune, out_dir,
                     fwd_picks, precompiler=None, pick=None):
    """One row: the backend at its pick (``pick``), its tuned best (``tune``) or its default;
    a configuration whose first call hung in a precompile worker becomes a ``timeout`` row
    without running here."""
    config, lay, tuned, block = None, layout, False, None
    if pick is not None:
        block, config = pick
        try:
            lay = autotune.reblock(layout, block) if block else layout
        except (layouts.LayoutError, ValueError) as exc:
            return make_row(prob, layout, backend, "unsupported",
                            error=f"--picks: block {block}: {exc}")
    elif tune and _tuned(cfg, backend):
        try:
            res = autotune.tune(
                prob, [backend], device=device, strategy=cfg.tune_strategy,
                settings=BenchSettings(min(10, cfg.warmup_ms), cfg.tune_rep_ms, cfg.flush_l2,
                                       min_reps=cfg.min_reps),
                cache_path=out_dir / TUNE_CACHE, rows_path=out_dir / results.TUNE_FILE,
                seed=cfg.seed, layout=layout, inputs=inputs, reference=ref,
                max_evals=cfg.tune_max_evals, forward=fwd_picks, precompiler=precompiler,
            )
            if res.best is not None:
                config, tuned = res.best.config, True
                if prob.mode == "fwd":
                    fwd_picks[backend] = (res.best.block, res.best.config)
                block = res.best.block
                lay = autotune.reblock(layout, block)
        except Exception as exc:  # noqa: BLE001 - a failed tuning falls back to the default
            return make_row(prob, layout, backend, classify_exception(exc),
                            error=f"tune: {error_text(exc)}")
    hung = precompiler.hung_error(Job.of(prob, backend, block, config)) if precompiler else None
    if hung is not None:
        return make_row(prob, lay, backend, "timeout", config=config, tuned=tuned, error=hung)
    return measure(prob, lay, backend, config, inputs=inputs, reference=ref, device=device,
                   settings=settings, tuned=tuned)


# ----------------------------------------------------------------------------- precompiling
def _tuned(cfg: SweepConfig, backend: str) -> bool:
    return not cfg.tune_backends or backend in cfg.tune_backends


def precompile_jobs(cfg: SweepConfig, groups: list[Group], device, tune: bool,
                    picks: dict | None = None) -> list:
    """The first calls the sweep's rows will make that are known before it starts: each
    compiling backend's default config on each row it runs untuned, and for each tuned 'fwd'
    problem the starts of the local search (``tuning.local.start_indices``, the same seed),
    cut to ``tune_max_evals``. The rest (the search's later rounds, and 'fwd+bwd' tuning,
    which starts from the 'fwd' pick) is compiled in batches as the tuner reaches it. A row in
    ``picks`` compiles its pick."""
    jobs = []
    max_n = dict(cfg.max_n)
    for g in groups:
        try:
            layout = cfg.problem(g.n, g.layout, g.dtype, g.items[0][0]).build_layout()
        except (layouts.LayoutError, ValueError):
            continue  # no such layout at this N: the rows say so; nothing to compile
        for mode, backend in g.items:
            if backend not in COMPILED_BACKENDS or g.n > max_n.get(backend, g.n):
                continue
            prob = cfg.problem(g.n, g.layout, g.dtype, mode)
            if backends.unavailable_reason(backend, device, prob.torch_dtype) is not None:
                continue
            if picks and pick_key(prob, backend) in picks:
                block, config = picks[pick_key(prob, backend)]
                jobs.append(Job.of(prob, backend, block, config))
            elif not (tune and _tuned(cfg, backend)):
                jobs.append(Job.of(prob, backend))
            elif mode == "fwd" and cfg.tune_strategy == "local":
                cands, _, _ = autotune.candidate_space(prob, layout, backend)
                starts = local.start_indices(cands, seed=cfg.seed)[:cfg.tune_max_evals]
                jobs.extend(Job.of(prob, backend, cands[i].block, cands[i].config)
                            for i in starts)
    return jobs


def open_precompiler(cfg: SweepConfig, groups: list[Group], device, tune: bool, out_dir: Path,
                     describe=None, picks: dict | None = None):
    """A ``Precompiler`` with ``cfg.precompile_workers`` processes that has run
    ``precompile_jobs``, or None when ``precompile_workers`` is 0. Each batch's outcome is
    logged to ``OUT/.work/precompile.jsonl``."""
    if not cfg.precompile_workers:
        return None
    pre = Precompiler(cfg.precompile_workers, str(device),
                      log_path=out_dir / WORK_DIR / "precompile.jsonl")
    jobs = precompile_jobs(cfg, groups, device, tune, picks)
    if describe:
        describe(f"precompiling {len(jobs)} first calls on {cfg.precompile_workers} workers")
    pre.run(jobs, phase="sweep")
    return pre


# ----------------------------------------------------------------------------- the runner
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_sweep(cfg: SweepConfig, out_dir, *, resume: bool = False, isolate: bool = False,
              tune: bool = False, max_minutes: float | None = None, device: str | None = None,
              progress: bool = True, picks_path=None) -> dict:
    """Run the grid into ``out_dir/results.jsonl``; returns counts {status: n, 'skipped': n,
    'stopped': bool}. ``picks_path``: an earlier results.jsonl whose (block, config) each
    matching row re-measures (``load_picks``)."""
    out_dir = Path(out_dir)
    out = out_dir / results.RESULTS_FILE
    if out.exists() and out.stat().st_size and not resume:
        raise SweepError(f"{out} already has rows: pass --resume to continue that sweep, or "
                         "choose another --out")
    picks = load_picks(picks_path) if picks_path else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.triton_interpret and not _cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = device or default_device()
    done = {r.key() for r in results.read_rows(out)} if out.exists() else set()
    groups = []
    for g in plan_groups(cfg):
        items = tuple(it for it in g.items if item_key(cfg, g, *it) not in done)
        if items:
            groups.append(Group(g.n, g.layout, g.dtype, items))
    total = sum(len(g.items) for g in groups)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    counts = {"skipped": sum(len(g.items) for g in plan_groups(cfg)) - total, "stopped": False}
    bar = _Progress(total, f"sweep {cfg.name}", enabled=progress)

    def on_row(row):
        counts[row.status] = counts.get(row.status, 0) + 1
        bar.advance(f"{row.layout} N={row.n_ctx} {row.mode} {row.backend}: {row.status}")

    with bar:
        if isolate:
            from stbench import isolation  # imports this module: import it here

            finished = isolation.run_isolated(cfg, groups, out_dir, device, tune, deadline,
                                              on_row, picks_path)
        else:
            finished = True
            pre = open_precompiler(cfg, groups, device, tune, out_dir, bar.describe, picks)
            try:
                for g in groups:
                    bar.describe(f"{g.layout} N={g.n} {g.dtype}")
                    if not run_group(cfg, g, out_dir, device=device, tune=tune,
                                     deadline=deadline, on_end=lambda i, row: on_row(row),
                                     precompiler=pre, picks=picks):
                        finished = False
                        break
            finally:
                if pre is not None:
                    pre.close()
    counts["stopped"] = not finished
    return counts


def _cuda_available() -> bool:
    return torch.cuda.is_available()


class _Progress:
    """A rich progress bar with ETA (or nothing when disabled)."""

    def __init__(self, total: int, title: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                              TimeRemainingColumn(), TextColumn("{task.fields[last]}"))
            self.task = self.p.add_task(title, total=total, last="")

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)

    def describe(self, text: str) -> None:
        if self.enabled:
            self.p.update(self.task, description=text)

    def advance(self, last: str) -> None:
        if self.enabled:
            self.p.update(self.task, advance=1, last=last)
