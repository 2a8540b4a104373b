"""``stbench profile``: Nsight Compute over one backend's kernels on one standard problem (GPU).

    stbench profile --backend triton --layout causal --n-ctx 65536 --mode fwd+bwd --out prof/
    stbench profile --backend cupy --layout st_mix --picks reports/standard/h200/results.jsonl \\
        --out prof/
    stbench profile --backend gluon --layout causal --n-ctx 16384 --mode fwd+bwd --source \
        --out prof/                                       # + stall samples per SASS instruction
    stbench profile --summary prof/ > prof/SUMMARY.md     # any machine: the table of the pages

The problem is the standard one (bf16, H = 8, D = 64, B = 65536 // N) over ``--layout``. The
backend runs the (block, config) its row of ``--picks`` measured (an earlier sweep's
results.jsonl), or ``--config`` at the layout's own block, or its default. The workload checks
the output against the dense reference first (row-sampled beyond N = 16384), runs the call
``--warm`` times unprofiled (compilation, planning), then once between cudaProfilerStart and
cudaProfilerStop: with ``--profile-from-start off`` ncu profiles exactly the kernels of that one
call. ncu runs with its clocks left alone (``--clock-control none``); under ``--out`` go
NAME.ncu-rep, its raw and details pages as CSV, and SUMMARY.md (``stbench.ncu``) over every raw
page in the folder. ``--source`` adds ncu's SourceCounters: the source page (NAME.source.csv, the
SASS with each instruction's warp-stall samples) and, in SUMMARY.md, each kernel's hottest
instructions at their cuobjdump offsets (`stbench sass`, `python -m stbench.kernels.gluon.aot`
print the same SASS ahead of time). ``--workload`` runs only the profiled call in this process
(what ncu starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from stbench.commands import fail, find_tool, json_value

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "MemoryWorkloadAnalysis",
            "ComputeWorkloadAnalysis", "WarpStateStats")
NCU_GLOBS = ("/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda*/bin/ncu")
PAGES = ("raw", "details")
EXIT_INCORRECT = 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile", help="Nsight Compute over one backend's kernels on one problem (GPU)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--summary", metavar="DIR", default=None,
                   help="only print the markdown table of the NAME.raw.csv pages in DIR")
    p.add_argument("--backend", default=None, help="a registered backend (triton, cupy, flex)")
    p.add_argument("--layout", default="causal", help="a layout spec (stbench.problems)")
    p.add_argument("--n-ctx", type=int, default=65536, help="sequence length N (B = 65536 // N)")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd",
                   help="profile the forward, or forward and backward")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--picks", default=None, metavar="RESULTS.jsonl",
                     help="run the (block, config) this backend's row of an earlier sweep had")
    src.add_argument("--config", type=json_value, default=None,
                     help="a backend config (JSON) at the layout's own block")
    p.add_argument("--warm", type=int, default=2, help="unprofiled calls before the profiled one")
    p.add_argument("--out", default=None, help="folder for the report and its pages")
    p.add_argument("--name", default=None, help="report name (default BACKEND_LAYOUT_N_MODE)")
    p.add_argument("--source", action="store_true",
                   help="also sample warp stalls per SASS instruction (ncu's SourceCounters): "
                        "NAME.source.csv, and the hottest instructions in SUMMARY.md")
    p.add_argument("--ncu", default=None, help="the ncu executable (default: found on PATH)")
    p.add_argument("--dry-run", action="store_true", help="print the ncu command and exit")
    p.add_argument("--workload", action="store_true",
                   help="run only the profiled call in this process (what ncu launches)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.summary:
        from stbench import ncu

        folder = Path(args.summary)
        if not folder.is_dir() or not any(folder.glob("*.raw.csv")):
            return fail("profile", f"--summary {folder}: no NAME.raw.csv pages there (write "
                        "them with stbench profile --out DIR)")
        sys.stdout.write(ncu.table(folder) + ncu.hot_instructions(folder))
        return 0
    if not args.backend:
        return fail("profile", "--backend is required (or --summary DIR)")
    try:
        prob = _problem(args)
    except ValueError as exc:
        return fail("profile", str(exc))
    if args.warm < 0:
        return fail("profile", f"--warm {args.warm}: use 0 or more")
    if args.workload:
        return workload(args, prob)
    return _run_ncu(args)


def _problem(args):
    from stbench import backends, problems

    backends.info(args.backend)  # UnknownBackend names the registered ones
    if args.n_ctx <= 0:
        raise ValueError(f"--n-ctx {args.n_ctx}: use a positive sequence length")
    return problems.standard_problem(args.layout, args.n_ctx, args.mode)


def _forwarded(args) -> list[str]:
    """The workload's own arguments, for the process ncu starts."""
    argv = ["--backend", args.backend, "--layout", args.layout, "--n-ctx", str(args.n_ctx),
            "--mode", args.mode, "--warm", str(args.warm)]
    if args.picks:
        argv += ["--picks", str(Path(args.picks).resolve())]
    if args.config is not None:
        argv += ["--config", json.dumps(args.config)]
    return argv


def _run_ncu(args) -> int:
    if not args.out:
        return fail("profile", "--out DIR is required: ncu's report and pages go there")
    ncu = find_tool("ncu", args.ncu, NCU_GLOBS)
    if ncu is None and not args.dry_run:
        return fail("profile", "Nsight Compute (ncu) was not found: install it, put it on the "
                    "PATH or pass --ncu PATH")
    out = Path(args.out)
    name = args.name or f"{args.backend}_{args.layout}_{args.n_ctx}_{args.mode.replace('+', '_')}"
    argv = [ncu or "ncu", "--clock-control", "none", "--profile-from-start", "off",
            "--target-processes", "all"]
    for section in SECTIONS + (("SourceCounters",) if args.source else ()):
        argv += ["--section", section]
    argv += ["-f", "-o", str(out / name), sys.executable, "-P", "-m", "stbench", "profile",
             "--workload", *_forwarded(args)]
    if args.dry_run:
        print(" ".join(argv))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    # no inductor compile subprocesses under ncu's injection
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    code = subprocess.run(argv, env=env).returncode
    report = out / f"{name}.ncu-rep"
    if not report.exists():
        print(f"stbench profile: ncu wrote no report (exit code {code})", file=sys.stderr)
        return code or 1
    for page in PAGES + (("source",) if args.source else ()):
        extra = ["--print-source", "sass"] if page == "source" else []
        with (out / f"{name}.{page}.csv").open("w") as f:
            subprocess.run([ncu, "--import", str(report), "--csv", "--page", page, *extra],
                           stdout=f, stderr=subprocess.STDOUT, check=False)
    from stbench import ncu as ncu_pages

    (out / "SUMMARY.md").write_text(ncu_pages.table(out) + ncu_pages.hot_instructions(out))
    print(f"profile {name}: {report}, pages and SUMMARY.md in {out}")
    return code


def workload(args, prob) -> int:
    """Check the backend on ``prob`` against dense, warm it up, then make one profiled call."""
    import torch

    from stbench import backends
    from stbench.sweep import load_picks, pick_key
    from stbench.tuning import check
    from stbench.tuning.measure import closure

    if not torch.cuda.is_available():
        return fail("profile", "the workload needs a CUDA GPU (profile on the GPU machine)")
    layout = prob.build_layout()
    block, config = None, args.config
    if args.picks:
        picks = load_picks(args.picks)
        if pick_key(prob, args.backend) not in picks:
            return fail("profile", f"--picks {args.picks}: no ok {args.backend} row for "
                        f"{prob.label()}")
        block, config = picks[pick_key(prob, args.backend)]
    run_layout = layout.reblock(block) if block else layout
    scale = prob.head_dim ** -0.5
    q, k, v = prob.inputs("cuda")
    module = backends.load(args.backend)
    ref = check.Reference(q, k, v, layout, scale, prob.mode, seed=prob.seed)
    verdict = ref.check_backend(
        lambda q_, k_, v_: module.attention(q_, k_, v_, run_layout, scale, config),
        inputs=(q, k, v))
    print(json.dumps({"backend": args.backend, "problem": prob.label(),
                      "block": run_layout.block, "config": config, "check": verdict.check,
                      "err": verdict.err, "tol": verdict.tol,
                      "status": "ok" if verdict.ok else "incorrect"}), flush=True)
    if not verdict.ok:
        print(f"stbench profile: incorrect, not profiled: {verdict.message()}", file=sys.stderr)
        return EXIT_INCORRECT
    do = torch.randn_like(q) if prob.mode == "fwd+bwd" else None
    call = closure(module, q, k, v, run_layout, scale, config, prob.mode, do)
    for _ in range(args.warm):
        call()
        for t in (q, k, v):
            t.grad = None
    torch.cuda.synchronize()
    cudart = torch.cuda.cudart()
    cudart.cudaProfilerStart()
    call()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()
    return 0
