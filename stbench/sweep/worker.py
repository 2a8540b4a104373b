"""A sweep worker subprocess: runs the rows of a task file and reports each row's start and end.

Started by ``isolation`` as ``python -P -m stbench.sweep.worker TASK.json``. It runs the rows
with ``group.run_group`` and prints ``STBENCH-BEGIN i`` / ``STBENCH-END i`` around row i of the
task (``STBENCH-STOP`` when the time budget ends the sweep); the rows themselves go to the
output folder's results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stbench.distributed import use_device
from stbench.sweep.config import Group, SweepConfig, load_picks, use_interpreter_if_no_gpu
from stbench.sweep.group import open_precompiler, run_group
from stbench.sweep.isolation import BEGIN, END, STOP
# Fault injection for testing isolation: STBENCH_SWEEP_FAULT=crash:BACKEND (the worker exits
# abruptly when it starts a row of BACKEND) or hang:BACKEND (it sleeps).
FAULT_ENV = "STBENCH_SWEEP_FAULT"
FAULT_EXIT_CODE = 86
FAULT_HANG_S = 3600


def worker_main(task_path: str) -> int:
    """Run the task file's rows (written by ``isolation.run_isolated``); the exit code."""
    task = json.loads(Path(task_path).read_text())
    cfg = SweepConfig.from_dict(task["config"])
    use_interpreter_if_no_gpu(cfg)
    use_device(task["device"])
    groups = [Group(g["n"], g["layout"], g["dtype"], tuple(tuple(x) for x in g["items"]))
              for g in task["groups"]]
    fault = os.environ.get(FAULT_ENV, "")

    def say(*parts):
        print(*parts, flush=True)

    picks = load_picks(task["picks"]) if task.get("picks") else None
    pre = open_precompiler(cfg, groups, task["device"], task["tune"], Path(task["out"]),
                           picks=picks)
    try:
        return _run_groups(cfg, groups, task, fault, say, pre, picks)
    finally:
        if pre is not None:
            pre.close()


def _run_groups(cfg, groups, task, fault, say, pre, picks) -> int:
    offset = 0
    for group in groups:
        def begin(i, group=group, offset=offset):
            say(BEGIN, offset + i)
            backend = group.items[i][1]
            if fault == f"crash:{backend}":
                os._exit(FAULT_EXIT_CODE)
            if fault == f"hang:{backend}":
                time.sleep(FAULT_HANG_S)

        finished = run_group(cfg, group, Path(task["out"]), device=task["device"],
                             tune=task["tune"], deadline=task["deadline"], on_begin=begin,
                             on_end=lambda i, row, offset=offset: say(END, offset + i),
                             precompiler=pre, picks=picks)
        if not finished:
            say(STOP)
            break
        offset += len(group.items)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stbench.sweep.worker")
    parser.add_argument("task", help="task file written by the sweep runner (isolation)")
    args = parser.parse_args(argv)
    return worker_main(args.task)


if __name__ == "__main__":
    sys.exit(main())
