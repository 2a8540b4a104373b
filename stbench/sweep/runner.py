"""The sweep runner: every group of the grid, in this process or in worker subprocesses.

``run_sweep`` skips the rows already in ``results.jsonl`` (``resume``), stops cleanly before a
row past ``max_minutes``, compiles kernels ahead of timing when the config has
``precompile_workers`` (``group.open_precompiler``), and with ``isolate`` runs the rows in
worker subprocesses (``sweep.isolation``), so that a row that crashes (illegal address) or
hangs becomes a ``runtime_error`` or ``timeout`` row. Without ``isolate`` a hung kernel cannot
be interrupted and a crash ends the sweep (``resume`` continues after the rows written). A sweep
writes only under its output folder and holds a lock on it: a second sweep on the same folder
refuses, naming the first one's pid and host.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from stbench import locks, results
from stbench.sweep import isolation
from stbench.sweep.config import (WORK_DIR, Group, SweepConfig, SweepError, item_key, load_picks,
                                  plan_groups, use_interpreter_if_no_gpu)
from stbench.sweep.group import open_precompiler, run_group

LOCK_FILE = "sweep.lock"  # under OUT/WORK_DIR: one sweep per output folder


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_sweep(cfg: SweepConfig, out_dir, *, resume: bool = False, isolate: bool = False,
              tune: bool = False, max_minutes: float | None = None, device: str | None = None,
              progress: bool = True, picks_path=None, only: frozenset | None = None,
              skip_bad_lines: bool = False) -> dict:
    """Run the grid into ``out_dir/results.jsonl``; returns counts {status: n, 'skipped': n,
    'stopped': bool}. ``picks_path``: an earlier results.jsonl whose (block, config) each
    matching row re-measures (``load_picks``). ``only``: run just the rows with these item keys
    (``config.item_key``; one rank's share of a sharded sweep, ``sweep.sharding``). The sweep
    holds ``lock_output`` throughout; ``resume`` first repairs a last line cut off by a killed
    sweep (``results.repair_cut_line``) and with ``skip_bad_lines`` sets unreadable lines aside
    (``results.set_bad_lines_aside``), measuring their rows again."""
    out_dir = Path(out_dir)
    with lock_output(out_dir):
        return _run_locked(cfg, out_dir, resume, isolate, tune, max_minutes, device, progress,
                           picks_path, only, skip_bad_lines)


def measured_keys(out: Path, skip_bad_lines: bool = False) -> set:
    """The row keys ``out`` (a results.jsonl) already holds, after repairing a last line cut off
    by a killed writer and, with ``skip_bad_lines``, setting unreadable lines aside."""
    if not out.exists():
        return set()
    results.repair_cut_line(out)
    if skip_bad_lines:
        results.set_bad_lines_aside(out)
    return {r.key() for r in results.read_rows(out)}


def lock_output(out_dir: Path) -> locks.FileLock:
    """Create ``out_dir`` and lock it for this sweep (``OUT/.work/sweep.lock``, released when the
    sweep ends or its process dies); SweepError names the live holder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"--out {out_dir} is a file, not a folder: choose a folder path (it is "
                         "created if absent)")
    try:
        (out_dir / WORK_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"--out {out_dir}: cannot create it ({exc.strerror}): choose a folder "
                         "you can write") from None
    try:
        return locks.acquire(out_dir / WORK_DIR / LOCK_FILE)
    except locks.LockBusy as exc:
        raise SweepError(f"--out {out_dir} is in use by another sweep ({exc.holder}): wait for "
                         "it to finish, or choose another --out") from None


def _run_locked(cfg, out_dir, resume, isolate, tune, max_minutes, device, progress, picks_path,
                only, skip_bad_lines) -> dict:
    out = out_dir / results.RESULTS_FILE
    if out.exists() and out.stat().st_size and not resume:
        raise SweepError(f"{out} already has rows: pass --resume to continue that sweep, or "
                         "choose another --out")
    picks = load_picks(picks_path) if picks_path else None
    use_interpreter_if_no_gpu(cfg)
    device = device or default_device()
    done = measured_keys(out, skip_bad_lines)
    groups, planned = [], 0
    for g in plan_groups(cfg):
        mine = [it for it in g.items if only is None or item_key(cfg, g, *it) in only]
        items = tuple(it for it in mine if item_key(cfg, g, *it) not in done)
        planned += len(mine)
        if items:
            groups.append(Group(g.n, g.layout, g.dtype, items))
    total = sum(len(g.items) for g in groups)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    counts = {"skipped": planned - total, "stopped": False}
    bar = _Progress(total, f"sweep {cfg.name}", enabled=progress)

    def on_row(row):
        counts[row.status] = counts.get(row.status, 0) + 1
        bar.advance(f"{row.layout} N={row.n_ctx} {row.mode} {row.backend}: {row.status}")

    with bar:
        if isolate:
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
