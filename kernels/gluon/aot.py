"""Ahead-of-time build of the Gluon kernels for sm_90 on a machine without a GPU, and what their
SASS says: registers, spills, shared memory, and per loop of the kernel the instruction mix of
one step (wgmma, MUFU.EX2, local-memory traffic).

    python -m stbench.kernels.gluon.aot                      # the tuner's space, and rows=192
    python -m stbench.kernels.gluon.aot --json '{"stages": 3}' 64   # one forward, as JSON
    python -m stbench.kernels.gluon.aot --backward 64        # the backward kernel, as JSON
    python -m stbench.kernels.gluon.aot --probe              # the warp_specialize probe (probe.py)

(TRITON_INTERPRET must be unset: Gluon does not compile under Triton's interpreter.)

Triton's bundled ptxas and cuobjdump do the work (triton.compile on a GPUTarget("cuda", 90)).
The launcher specialises pointers and N (a multiple of 16) as 16-byte divisible, so the build
here does the same and matches the kernel that runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

import torch

from ..sass_loops import innermost_loops
from .backward import STAGES as BWD_STAGES, STEP_M, _bwd_kernel
from .config import ROWS_192_HEAD_DIMS, GluonConfig, forward_variants
from .forward import (
    BLOCK_N, CONSUMER_WARPS, MAX_REGS, MAX_REGS3, WG_ROWS, _fwd_kernel, smem_layout,
)

TARGET_ARCH = 90
POINTERS = ("O", "LSE2", "head_pattern", "ptr", "split", "cols", "tmask", "masks", "kinds")
BWD_POINTERS = ("DK", "DV", "head_pattern", "ptr", "split", "cols", "tmask", "masks")
COUNTED = ("HGMMA", "MUFU", "LDL", "STL", "BAR", "STSM", "UTMALDG", "UTMAREDG", "REDG")


@dataclass(frozen=True)
class Build:
    """What the compiled forward is: registers a thread at launch (the kernel's cap; the
    consumers raise theirs with setmaxnreg), stack bytes (spills), shared bytes (dynamic), the
    whole kernel's instruction counts, and per innermost matrix loop (one per tile kind and
    consumer) the instructions of one step."""

    regs: int
    stack: int
    shared: int
    counts: dict
    loops: tuple  # (instructions a step, {opcode: count}) per loop


def _ty(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _compile(fn, sig: dict, cx: dict, pointers: tuple, max_regs: int = MAX_REGS):
    """``fn`` compiled for sm_90 with the launcher's specialisation (pointers and N divisible
    by 16) and register cap ``max_regs``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    names = fn.arg_names
    signature = {n: ("constexpr" if n in cx else sig[n]) for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n in pointers or n == "N"}
    src = GluonASTSource(fn=fn, signature=signature, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", TARGET_ARCH, 32),
                          options={"num_warps": CONSUMER_WARPS.value, "maxnreg": max_regs})


def _desc(rows: int, head_dim: int, dtype: torch.dtype) -> str:
    return f"tensordesc<{_ty(dtype)}[{rows}, {head_dim}],{smem_layout(rows, head_dim, dtype)!r}>"


def compile_forward(cfg: GluonConfig, head_dim: int = 64, dtype: torch.dtype = torch.bfloat16):
    """The forward kernel of ``cfg`` compiled for sm_90 (a triton CompiledKernel)."""
    sig = {"qd": _desc(WG_ROWS, head_dim, dtype), "kd": _desc(BLOCK_N.value, head_dim, dtype),
           "vd": _desc(BLOCK_N.value, head_dim, dtype), "O": f"*{_ty(dtype)}", "LSE2": "*fp32",
           "masks": "*u8", "qk_scale2": "fp32", "N": "i32", "H": "i32", "n_t": "i32",
           "n_e": "i32"}
    sig.update({n: "*i32" for n in POINTERS if n not in sig})
    three = cfg.rows == 192
    cx = {"HEAD_DIM": head_dim, "STAGES": cfg.stages, "PINGPONG": cfg.pingpong,
          "P_SMEM": cfg.p_smem, "NUM_WG": 3 if three else 2}
    return _compile(_fwd_kernel, sig, cx, POINTERS, MAX_REGS3 if three else MAX_REGS)


def compile_backward(head_dim: int = 64, dtype: torch.dtype = torch.bfloat16,
                     stages: int = BWD_STAGES):
    """The backward kernel (backward.py) compiled for sm_90."""
    from triton.experimental.gluon import language as gl

    t = _ty(dtype)
    rows = STEP_M.value
    row = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)
    dq_layout = gl.NVMMASharedLayout.get_default_for([rows, head_dim], gl.float32)
    sig = {"kd": _desc(BLOCK_N.value, head_dim, dtype), "vd": _desc(BLOCK_N.value, head_dim, dtype),
           "qd": _desc(rows, head_dim, dtype), "dod": _desc(rows, head_dim, dtype),
           "lsed": f"tensordesc<fp32[{rows}],{row!r}>",
           "deltad": f"tensordesc<fp32[{rows}],{row!r}>",
           "dqd": f"tensordesc<fp32[{rows}, {head_dim}],{dq_layout!r}>",
           "DK": f"*{t}", "DV": f"*{t}", "masks": "*u8", "qk_scale2": "fp32", "scale": "fp32",
           "N": "i32", "H": "i32", "n_t": "i32"}
    sig.update({n: "*i32" for n in BWD_POINTERS if n not in sig})
    return _compile(_bwd_kernel, sig, {"HEAD_DIM": head_dim, "STAGES": stages}, BWD_POINTERS)


def compile_probe():
    """The warp_specialize probe (probe.py) compiled for sm_90."""
    from .probe import _probe_kernel

    return _compile(_probe_kernel, {"out": "*i32", "n": "i32"}, {}, ("out",))


def partition_state(kernel) -> dict:
    """What the warp_specialize lowering leaves in ``kernel``'s SASS: its shared bytes, the
    workers' byte reads of their partition index (LDS.U8) and the CTA-wide named-barrier-1
    syncs that order them against the default warps' writes."""
    (sass,) = _cuobjdump(kernel, "--dump-sass")
    return {"shared": kernel.metadata.shared, "byte_reads": len(re.findall(r"LDS\.U8", sass)),
            "barrier_1_syncs": len(re.findall(r"BAR\.SYNC\.DEFER_BLOCKING 0x1 ;", sass))}


def _cuobjdump(kernel, *options: str) -> list[str]:
    """cuobjdump's output for each option (one run each) on ``kernel``'s cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return [subprocess.run([_tool("cuobjdump"), option, path], capture_output=True,
                               text=True, check=True).stdout for option in options]


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def matrix_loops(sass: str) -> list[tuple[int, Counter]]:
    """Innermost loops (spans closed by a backward branch) that issue HGMMA: (instructions,
    opcode counts) of one step each, in address order."""
    return [(len(loop), Counter(_opcode(t) for t in loop))
            for loop in innermost_loops(sass, ("HGMMA",))]


def inspect(kernel) -> Build:
    """Registers, stack, shared memory and SASS counts of a compiled forward."""
    sass, res = _cuobjdump(kernel, "--dump-sass", "--dump-resource-usage")
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK):(\d+)", res)}
    ops = Counter(_opcode(t) for t in re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", sass))
    loops = tuple((n, {k: c[k] for k in COUNTED}) for n, c in matrix_loops(sass))
    return Build(usage["REG"], usage["STACK"], kernel.metadata.shared,
                 {k: ops[k] for k in COUNTED}, loops)


def main(argv=None) -> None:
    """Print each variant's build; ``--json CONFIG [HEAD_DIM]``: one variant's Build as JSON
    (the CPU tests run this in a process without TRITON_INTERPRET, under which Gluon does not
    compile)."""
    import json
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        print(json.dumps(partition_state(compile_probe())))
        return
    if argv[:1] in (["--json"], ["--backward"]):
        if argv[0] == "--json":
            head_dim = int(argv[2]) if len(argv) > 2 else 64
            b = inspect(compile_forward(GluonConfig.from_dict(json.loads(argv[1])), head_dim))
        else:
            b = inspect(compile_backward(int(argv[1]) if len(argv) > 1 else 64))
        print(json.dumps({"regs": b.regs, "stack": b.stack, "shared": b.shared,
                          "counts": b.counts, "loops": [[n, c] for n, c in b.loops]}))
        return
    for head_dim in (64, 128):
        three = [GluonConfig(rows=192)] if head_dim in ROWS_192_HEAD_DIMS else []
        for cfg in forward_variants(head_dim) + three:
            b = inspect(compile_forward(cfg, head_dim))
            print(f"D={head_dim} {cfg.as_dict()}: regs {b.regs} stack {b.stack} shared {b.shared} "
                  f"{b.counts}")
            for n, c in b.loops:
                print(f"    loop step {n} instructions: {c}")


if __name__ == "__main__":
    main()
