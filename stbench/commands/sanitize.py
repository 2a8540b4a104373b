"""``stbench sanitize``: compute-sanitizer over every kernel variant of the backends (GPU).

    stbench sanitize --backends triton                               # memcheck, D = 32, 64, 128
    stbench sanitize --backends cupy --tools memcheck,racecheck --out san/
    stbench sanitize --backends triton --head-dims 64 --layouts causal,strided \\
        --config '{"BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}'
    stbench sanitize --backends gluon --tools memcheck,racecheck --head-dims 64,128 \\
        --dtypes bfloat16 --block 128                                # gluon runs block 128 only

The workload is ``stbench check`` (every layout family: blocks 16..128, the strided
permutation, partial blocks, empty rows; forward and dq, dk, dv against the dense reference) at
small shapes, once per head dim. Per head dim it runs once plainly first (to fill the kernel
caches, so the sanitizer does not watch the compilers), then under each tool with
``--error-exitcode``; PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own allocation, so
an access past a tensor's end lies outside any allocation and memcheck reports it. Each run's
output goes to ``--out`` (when given); the last lines say the sanitizer's error summary per run.
Exit code 1 when a tool reports errors, a check fails, or a run checked nothing (every case
skipped for the backend: its log's "skipped" lines say why, e.g. gluon at a block other than 128).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from stbench.commands import block_problem, csv_list, fail, find_tool, json_value

TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
SANITIZER_GLOBS = ("/usr/local/cuda*/bin/compute-sanitizer",
                   "/usr/local/cuda*/compute-sanitizer/compute-sanitizer")
SANITIZER_ERROR_EXIT = 9  # the exit code compute-sanitizer returns when it found errors
PRINT_LIMIT = 20  # errors printed per run
SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error")
CHECKS = re.compile(r"(\d+) of (\d+) checks passed")  # stbench check's last line
DEFAULTS = {"n_ctx": 512, "heads": 2, "batch": 2, "dtypes": "bfloat16,float32"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sanitize", help="compute-sanitizer over every kernel variant of the backends (GPU)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backends", type=csv_list, required=True,
                   help="comma-separated backends (triton, cupy, ...)")
    p.add_argument("--tools", type=csv_list, default=["memcheck"],
                   help=f"comma-separated compute-sanitizer tools, of {', '.join(TOOLS)}")
    p.add_argument("--head-dims", type=lambda s: [int(x) for x in csv_list(s)],
                   default=[32, 64, 128], help="head dims, one workload each (default 32,64,128)")
    p.add_argument("--dtypes", default=DEFAULTS["dtypes"],
                   help=f"comma-separated dtypes (default {DEFAULTS['dtypes']})")
    p.add_argument("--n-ctx", type=int, default=DEFAULTS["n_ctx"], help="sequence length N")
    p.add_argument("--heads", type=int, default=DEFAULTS["heads"], help="attention heads H")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="batch size B")
    p.add_argument("--layouts", default=None, help="comma-separated subset of check's layouts")
    p.add_argument("--block", type=int, default=None,
                   help="layout block of the workload (check's --block, default 16; gluon "
                   "runs only 128)")
    p.add_argument("--config", type=json_value, default=None,
                   help="a backend config (JSON) to run instead of the default")
    p.add_argument("--out", default=None, help="folder for each run's output (NAME.log)")
    p.add_argument("--sanitizer", default=None,
                   help="the compute-sanitizer executable (default: found on PATH)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.set_defaults(func=run)


def check_argv(args, head_dim: int) -> list[str]:
    """``stbench check`` for one head dim, as a fresh process runs it."""
    argv = [sys.executable, "-P", "-m", "stbench", "check", "--backends", ",".join(args.backends),
            "--dtypes", args.dtypes, "--n-ctx", str(args.n_ctx), "--heads", str(args.heads),
            "--batch", str(args.batch), "--head-dim", str(head_dim), "--width", "160"]
    if args.layouts:
        argv += ["--layouts", args.layouts]
    if args.block is not None:
        argv += ["--block", str(args.block)]
    if args.config is not None:
        argv += ["--config", json.dumps(args.config)]
    return argv


def plan(args, sanitizer: str) -> list[tuple[str, list[str]]]:
    """(run name, argv): per head dim a plain run, then one run under each tool."""
    runs = []
    for d in args.head_dims:
        runs.append((f"warm_d{d}", check_argv(args, d)))
        for tool in args.tools:
            runs.append((f"{tool}_d{d}", [sanitizer, "--tool", tool, "--error-exitcode",
                                          str(SANITIZER_ERROR_EXIT), "--print-limit",
                                          str(PRINT_LIMIT), *check_argv(args, d)]))
    return runs


def errors_reported(output: str) -> int | None:
    """The error count of compute-sanitizer's ``ERROR SUMMARY`` line, None when absent."""
    found = SUMMARY.findall(output)
    return int(found[-1]) if found else None


def checks_run(output: str) -> int | None:
    """How many checks ``stbench check`` ran (its "P of R checks passed" line), None when
    absent."""
    found = CHECKS.findall(output)
    return int(found[-1][1]) if found else None


def _validate(args) -> str | None:
    unknown = sorted(set(args.tools) - set(TOOLS))
    if unknown or not args.tools:
        return f"--tools {','.join(args.tools)}: use some of {', '.join(TOOLS)}"
    if not args.head_dims or min(args.head_dims) <= 0:
        return "--head-dims: give positive head dims, e.g. 32,64,128"
    for opt in ("n_ctx", "heads", "batch"):
        if getattr(args, opt) <= 0:
            return f"--{opt.replace('_', '-')} must be a positive integer"
    if args.block is not None and (why := block_problem(args.n_ctx, args.block)):
        return why
    from stbench import backends

    for name in args.backends:
        backends.info(name)
    return None


def run(args) -> int:
    try:
        problem = _validate(args)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        return fail("sanitize", problem)
    sanitizer = find_tool("compute-sanitizer", args.sanitizer, SANITIZER_GLOBS)
    if sanitizer is None and not args.dry_run:
        return fail("sanitize", "compute-sanitizer was not found: install the CUDA toolkit, put "
                    "it on the PATH or pass --sanitizer PATH")
    runs = plan(args, sanitizer or "compute-sanitizer")
    if args.dry_run:
        for name, argv in runs:
            print(f"{name}: {' '.join(argv)}")
        return 0
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    failed, lines = False, []
    for name, argv in runs:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        if out is not None:
            (out / f"{name}.log").write_text(text)
        errors = errors_reported(text)
        idle = checks_run(text) == 0  # every case skipped: no kernel ran under the tool
        ok = proc.returncode == 0 and not errors and not idle
        failed |= not ok
        what = "" if errors is None else f", {errors} sanitizer errors"
        if idle:
            what += (", no check ran (every case skipped for these backends: the log's "
                     "'skipped' lines say why; gluon needs --block 128)")
        lines.append(f"{name}: exit code {proc.returncode}{what}: {'ok' if ok else 'FAILED'}")
        print(lines[-1], flush=True)
    if out is not None:
        (out / "SUMMARY.txt").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0
