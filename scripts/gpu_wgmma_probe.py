"""GPU probe of the wgmma conventions the CuPy backend's wgmma path relies on (about 10 s).

    python scripts/gpu_wgmma_probe.py [--out reports/cupy/wgmma_probe.jsonl]

Builds ``kernels/cupy/probes/st_wgmma_probe.cu`` for sm_90a (NVRTC through CuPy; nvcc if
NVRTC fails), runs every case of ``stbench.kernels.cupy.wgmma_probe.CASES`` in bf16 and fp16
(one CTA of 128 threads each: a single warpgroup, 64 x 64 x 64) and compares with torch
(float64 on the CPU). Prints one JSON line per case, then a summary line whose ``verdict`` is
'reading confirmed' when the cases that follow this project's reading of the PTX ISA
(st_wgmma.cuh: K-major LBO 128 / SBO 1024, MN-major LBO 1024 / SBO 128, D and register-A
fragments as in st_wgmma_ptx.cuh) all match and the LBO / SBO-swapped controls do not.
A compile error, a launch error or a non-Hopper device is a row with its status, not a crash;
after a launch error the CUDA context is unusable, so the remaining cases are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import torch

from stbench.kernels.cupy import wgmma_probe as wp

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build(dtype: torch.dtype) -> tuple[bytes, str]:
    """(cubin, compiler used) of the probe for sm_90a."""
    from cupy.cuda import compiler

    src = wp.source()
    try:
        prog = compiler._NVRTCProgram(src, "st_wgmma_probe.cu", method="cubin")
        cubin, _ = prog.compile(wp.nvrtc_options(dtype))
        return cubin, "nvrtc"
    except Exception as exc:  # noqa: BLE001  (fall back to nvcc, report both if it fails too)
        if shutil.which("nvcc") is None:
            raise
        nvrtc_error = f"{type(exc).__name__}: {exc}"[:1500]
    with tempfile.TemporaryDirectory() as tmp:
        cu, out = os.path.join(tmp, "p.cu"), os.path.join(tmp, "p.cubin")
        with open(cu, "w") as f:
            f.write(src)
        res = subprocess.run(wp.nvcc_command(dtype, cu, out), capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"nvrtc: {nvrtc_error}\nnvcc: {res.stderr[-1500:]}")
        with open(out, "rb") as f:
            return f.read(), f"nvcc (nvrtc failed: {nvrtc_error[:200]})"


def run_case(module, case: wp.ProbeCase, a, b, c):
    import cupy
    import numpy as np

    bits = [cupy.asarray(x.view(torch.int16).numpy()) for x in (a, b, c)]
    d = cupy.zeros((wp.TILE, wp.TILE), dtype=cupy.float32)
    d2 = cupy.zeros_like(d)
    fn = module.get_function(case.kernel)
    fn((1, 1, 1), (wp.THREADS, 1, 1), (*bits, d, d2, *(np.int32(x) for x in case.args())))
    cupy.cuda.Device().synchronize()
    return torch.from_numpy(cupy.asnumpy(d)), torch.from_numpy(cupy.asnumpy(d2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    ap.add_argument("--dtypes", default="bf16,fp16")
    args = ap.parse_args()
    sink = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    if not torch.cuda.is_available():
        emit({"kind": "summary", "status": "skipped", "why": "no CUDA device"})
        return 1
    cap = torch.cuda.get_device_capability()
    emit({"kind": "env", "device": torch.cuda.get_device_name(), "capability": list(cap)})
    if cap != (9, 0):
        emit({"kind": "summary", "status": "skipped", "why": f"wgmma needs sm_90a, got {cap}"})
        return 1
    import cupy

    rows: list[dict] = []
    dead = False
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        try:
            cubin, how = build(dtype)
            module = cupy.cuda.function.Module()
            module.load(cubin)
        except Exception as exc:  # noqa: BLE001
            emit({"kind": "case", "dtype": name, "status": "compile_error",
                  "error": f"{type(exc).__name__}: {exc}"[-3000:]})
            continue
        a, b, c = wp.inputs(dtype, seed=1)
        for case in wp.CASES:
            if dead:
                row = {"case": case.name, "status": "skipped", "why": "earlier launch error"}
            else:
                try:
                    d, d2 = run_case(module, case, a, b, c)
                    row = {"status": "ok", **wp.judge(case, a, b, c, d, d2)}
                except Exception as exc:  # noqa: BLE001
                    dead = True
                    row = {"case": case.name, "follows_reading": case.follows_reading,
                           "status": "launch_error",
                           "error": "".join(traceback.format_exception_only(exc))[-1500:]}
            row = {"kind": "case", "dtype": name, "compiler": how, **row}
            rows.append(row)
            emit(row)
    emit({"kind": "summary", "verdict": wp.verdict(rows),
          "cases": len(rows), "matched": sum(bool(r.get("match")) for r in rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
