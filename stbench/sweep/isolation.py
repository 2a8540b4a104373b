"""Running sweep rows in worker subprocesses, so that a crashing or hanging kernel becomes a row.

The runner writes a task file (the sweep's config and the rows still to run) and starts
``python -P -m stbench.sweep.worker TASK.json`` (``worker``) (an argv list, no shell). The worker
runs the rows with ``group.run_group`` and prints ``STBENCH-BEGIN i`` / ``STBENCH-END i`` around
row i (``STBENCH-STOP`` when the time budget ends the sweep). The runner reads those lines: a worker
that dies inside row i (illegal address, segfault) makes row i a ``runtime_error`` row; one
silent past ``row_timeout_s`` is killed (its own process group) and row i becomes a ``timeout``
row; either way a fresh worker continues with the rows after i. Each worker's stderr is kept in
``OUT/.work/task-*.log``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from stbench import results
from stbench.sweep.config import WORK_DIR, Group
from stbench.tuning.measure import make_row

# the worker's lines on its stdout around row i: "STBENCH-BEGIN i", "STBENCH-END i"; the budget
# ended the sweep: "STBENCH-STOP"
BEGIN, END, STOP = "STBENCH-BEGIN", "STBENCH-END", "STBENCH-STOP"
WORKER_STARTUP_S = 180  # imports, CUDA context, first compilation before a worker's first row
TUNE_TIMEOUT_FACTOR = 20  # a tuned row may take this many row timeouts (many candidates)


def _regroup(pending: list) -> list[Group]:
    """[(group, item)] -> groups of consecutive items of one (N, layout, dtype)."""
    out: list[Group] = []
    for g, item in pending:
        if out and (out[-1].n, out[-1].layout, out[-1].dtype) == (g.n, g.layout, g.dtype):
            out[-1] = Group(g.n, g.layout, g.dtype, out[-1].items + (item,))
        else:
            out.append(Group(g.n, g.layout, g.dtype, (item,)))
    return out


def run_isolated(cfg, groups: list[Group], out_dir: Path, device, tune, deadline,
                  on_row, picks_path=None) -> bool:
    """Run every item in one worker subprocess; after a crash or a timeout, record that item's
    row and start a fresh worker with the items after it."""
    work = out_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    out = out_dir / results.RESULTS_FILE
    pending = [(g, item) for g in groups for item in g.items]
    row_timeout = cfg.row_timeout_s * (TUNE_TIMEOUT_FACTOR if tune else 1)
    while pending:
        task = work / f"task-{os.getpid()}-{time.time_ns()}.json"
        task.write_text(json.dumps({
            "config": cfg.source, "groups": [asdict(g) for g in _regroup(pending)],
            "out": str(out_dir), "device": device, "tune": tune, "deadline": deadline,
            "picks": str(picks_path) if picks_path else None,
        }))
        tail = _NewRows(out)
        outcome, index, detail = _watch_worker(
            task, task.with_suffix(".log"), row_timeout,
            lambda i, tail=tail: [on_row(r) for r in tail.read()])
        task.unlink(missing_ok=True)
        if outcome == "done":
            return True
        if outcome == "stopped":
            return False
        # crash or timeout at pending[index]: record it, go on with the rest in a fresh worker
        g, (mode, backend) = pending[index]
        prob = cfg.problem(g.n, g.layout, g.dtype, mode)
        status = "timeout" if outcome == "timeout" else "runtime_error"
        row = make_row(prob, None, backend, status, block=prob.layout.block, error=detail,
                       device=str(device))
        results.append_rows(out, [row])
        on_row(row)
        pending = pending[index + 1:]
        if deadline is not None and time.time() > deadline:
            return False
    return True


class _NewRows:
    """Rows appended to a results file since this object was made."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [results.row_from_dict(json.loads(line), str(self.path))
                for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def _watch_worker(task: Path, log: Path, row_timeout: float, ended):
    """Run one worker, calling ``ended(i)`` as it finishes item i. Returns ('done'|'stopped',
    n_finished, '') or ('crash'|'timeout', index of the item it died on, detail)."""
    # -P: do not put the working directory first on sys.path, where a source checkout's
    # stbench/ folder would shadow the installed package (its layouts/ etc. are mapped in)
    argv = [sys.executable, "-P", "-m", "stbench.sweep.worker", str(task)]
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        finished = 0
        limit = time.time() + WORKER_STARTUP_S + row_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, limit - time.time()))
            except queue.Empty:
                line = ""
            if line is None:  # stdout closed: the worker exited
                proc.wait()
                break
            if line.startswith(BEGIN):
                limit = time.time() + row_timeout
            elif line.startswith(END):
                finished = int(line.split()[1]) + 1
                ended(finished - 1)
                limit = time.time() + row_timeout
            elif line.startswith(STOP):
                proc.wait()
                return "stopped", finished, ""
            if time.time() > limit:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session, started above
                proc.wait()
                return "timeout", finished, f"killed after {row_timeout:.0f} s without finishing"
    if proc.returncode == 0:
        return "done", finished, ""
    text = log.read_text(errors="replace")[-1500:]
    return "crash", finished, f"worker died (exit code {proc.returncode}): {text}"


def _pump(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line.strip())
    q.put(None)
