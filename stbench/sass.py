"""AOT-compile the Triton backend's kernels for an H200 (sm_90) without a GPU and summarise the
generated code (``stbench sass``): registers/thread, spills, shared memory, warps/stages, SASS
instruction counts, and the instructions of one step of each kernel's main (FULL tile) loop.

Each row is one @triton.jit kernel (kernels/triton/forward.py, backward.py) at a configuration
the autotuner picked at N = 65536, bf16, head dim 64 (reports/standard/h200/results.jsonl), with the
constexprs the launchers pass for that layout (UNIT = min(layout block, tile sides),
G = tile minor / UNIT, HAS_PERM for strided / st_mix). FULL, CAUSAL and MASKED tiles are three
constexpr-specialised loops inside ONE kernel, so each row covers all three.
Pointers and ints divisible by 16 get the tt.divisibility=16 hint, as the JIT launcher gives
them at run time (torch allocations are 16-byte aligned; N = 65536, n_t = N / tile).

Compilation: triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32)); registers and
spills from Triton's bundled ptxas -v on the PTX; SASS from its bundled cuobjdump.

Run on any machine (no GPU needed): ``stbench sass --out sass_inspect.txt``. The kernels must be
defined compiled, not interpreted: ``stbench sass`` imports them with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from stbench.kernels.sass_loops import innermost_loops

N, H, D = 65536, 8, 64
TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# H200 limits for resident CTAs per SM: registers, shared memory, warps, CTAs
SM_REGISTERS, SM_SHARED_BYTES, SM_WARPS, SM_CTAS = 65536, 233472, 64, 32
REGISTER_GRANULE = 8  # registers are allocated per thread in units of 8
WARP_SIZE = 32
PLAN = ["head_pattern", "pattern_perm", "perm", "ptr", "split", "cols", "tmask"]
COUNTS = ["HGMMA", "HMMA", "LDGSTS", "LDGSTS.128", "UTMALDG", "LDG", "LDG.128", "LDSM", "LDS", "STS",
          "MUFU.EX2", "BAR.SYNC"]


def fwd_sig():
    s = {n: "*bf16" for n in ("Q", "K", "V", "O", "O_PREV")}
    s.update(LSE2="*fp32", LSE_PREV="*fp32", masks="*u8", qk_scale2="fp32", N="i32", H="i32",
             n_t="i32", **{n: "*i32" for n in PLAN})
    return s


def dq_sig():
    s = {n: "*bf16" for n in ("Q", "K", "V", "O", "DO", "DQ", "DQ_PREV")}
    s.update(LSE2="*fp32", DELTA="*fp32", LSE_BWD="*fp32", masks="*u8", qk_scale2="fp32",
             scale="fp32", N="i32", H="i32", n_t="i32", **{n: "*i32" for n in PLAN})
    return s


def dkdv_sig():
    s = dq_sig()
    for n in ("O", "DQ", "DQ_PREV"):  # LSE2 stays: the kernel before LSE_BWD read it
        del s[n]
    s.update({n: "*bf16" for n in ("DK", "DV", "DK_PREV", "DV_PREV")}, DQACC="*fp32")
    return s


def tiled(name, fn, sig, major, minor, block, perm, warps, stages, flag, tma=False,
          transposed=False, dq_atomic=False):
    """A row of a tile kernel: major / minor tile sides, the layout block, HAS_PERM; ``tma``:
    the forward's fwd_loads="tma" (host tensor descriptors over [B * H * N, D]);
    ``transposed``: the dK/dV kernel's dkv_transposed (KT); ``dq_atomic``: its dQ adds."""
    unit = min(block, major, minor)
    names = ("BLOCK_N", "BLOCK_M") if fn == "dkdv" else ("BLOCK_M", "BLOCK_N")
    cx = {"HEAD_DIM": D, names[0]: major, names[1]: minor, "UNIT": unit, "G": minor // unit,
          "HAS_PERM": perm, "IN_PREC": "tf32", flag: False}
    if fn == "dkdv":
        cx["KT"] = transposed
        cx["DQ_ATOMIC"] = dq_atomic
    if fn == "dq":
        cx["DELTA_HERE"] = True  # the one-part backward: delta in the dQ kernel
    if fn == "fwd":
        cx["TMA"] = tma
        if tma:
            sig = {**sig, "QD": f"tensordesc<bf16[{major},{D}]>",
                   "KD": f"tensordesc<bf16[{minor},{D}]>", "VD": f"tensordesc<bf16[{minor},{D}]>"}
        else:
            cx.update(QD=None, KD=None, VD=None)
    ints = {"N": N, "H": H, "n_t": N // major}
    cfg = (f"{major}x{minor} u{unit} G{minor // unit} perm{int(perm)} w{warps} s{stages}"
           + (" tma" if tma else "")
           + (" transposed" if transposed else "")
           + (" dq_atomic" if dq_atomic else ""))
    return name, fn, sig, cx, ints, warps, stages, cfg


def kernel_rows() -> list[tuple]:
    """(name, kernel, signature, constexprs, int arguments, warps, stages, label) per row."""
    from stbench.kernels.triton.backward import DELTA_ROWS, _delta_kernel, _dkdv_kernel, _dq_kernel
    from stbench.kernels.triton.forward import _fwd_kernel

    fns = {"fwd": _fwd_kernel, "dq": _dq_kernel, "dkdv": _dkdv_kernel}
    rows = [
        tiled("fwd causal/fixed", "fwd", fwd_sig(), 128, 64, 128, False, 8, 3, "MERGE"),
        tiled("fwd causal/fixed", "fwd", fwd_sig(), 128, 64, 128, False, 8, 3, "MERGE", True),
        tiled("fwd local", "fwd", fwd_sig(), 64, 32, 32, False, 4, 3, "MERGE"),
        tiled("fwd strided/st_mix", "fwd", fwd_sig(), 64, 32, 64, True, 4, 2, "MERGE"),
        ("delta", _delta_kernel, {"O": "*bf16", "DO": "*bf16", "DELTA": "*fp32", "LSE2": "*fp32",
                                  "LSE_BWD": "*fp32", "n_rows": "i32"},
         {"HEAD_DIM": D, "ROWS": DELTA_ROWS, "WITH_DELTA": True, "WITH_LSE": False}, {"n_rows": H * N}, 4, 3,
         f"{DELTA_ROWS} rows w4 s3"),
        tiled("dq causal/fixed", "dq", dq_sig(), 128, 128, 128, False, 8, 2, "ACCUM"),
        tiled("dkdv causal/fixed", "dkdv", dkdv_sig(), 128, 128, 128, False, 8, 2, "ACCUM"),
        tiled("dkdv causal/fixed", "dkdv", dkdv_sig(), 128, 128, 128, False, 8, 2, "ACCUM",
              dq_atomic=True),
        tiled("dq local", "dq", dq_sig(), 64, 64, 32, False, 4, 2, "ACCUM"),
        tiled("dkdv local", "dkdv", dkdv_sig(), 64, 64, 32, False, 4, 2, "ACCUM"),
        tiled("dq st_mix", "dq", dq_sig(), 64, 64, 64, True, 4, 2, "ACCUM"),
        tiled("dkdv st_mix", "dkdv", dkdv_sig(), 64, 64, 64, True, 4, 2, "ACCUM"),
        tiled("dq strided", "dq", dq_sig(), 32, 64, 64, True, 4, 2, "ACCUM"),
        tiled("dkdv strided", "dkdv", dkdv_sig(), 64, 32, 64, True, 4, 2, "ACCUM"),
        tiled("dkdv paper fixed", "dkdv", dkdv_sig(), 32, 128, 32, False, 4, 2, "ACCUM"),
        tiled("dkdv paper fixed", "dkdv", dkdv_sig(), 32, 128, 32, False, 4, 2, "ACCUM",
              transposed=True),
        tiled("dkdv paper fixed", "dkdv", dkdv_sig(), 32, 64, 32, False, 4, 2, "ACCUM"),
        tiled("dkdv paper fixed", "dkdv", dkdv_sig(), 32, 64, 32, False, 4, 2, "ACCUM",
              transposed=True),
    ]
    return [(name, fns.get(fn, fn), *rest) for name, fn, *rest in rows]


def compile_row(fn, sig, cx, ints, warps, stages):
    names = fn.arg_names
    signature = {n: ("constexpr" if n in cx else sig[n]) for n in names}
    attrs = {}
    for i, n in enumerate(names):
        if n not in cx and (sig[n].startswith("*") or ints.get(n, 1) % 16 == 0
                            and not sig[n].startswith("tensordesc")):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=TARGET,
                          options={"num_warps": warps, "num_stages": stages})


def ptxas_usage(ptx, tmp):
    path = os.path.join(tmp, "k.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    r = subprocess.run([os.path.join(BIN, "ptxas"), "-v", f"-arch={arch}", path,
                        "-o", os.path.join(tmp, "v.cubin")], capture_output=True, text=True)
    txt = r.stdout + r.stderr
    get = lambda pat: int(m.group(1)) if (m := re.search(pat, txt)) else None  # noqa: E731
    return (arch, get(r"Used (\d+) registers"), get(r"(\d+) bytes spill stores"),
            get(r"(\d+) bytes spill loads"), get(r"(\d+) bytes stack frame"))


def sass_counts(cubin, tmp):
    path = os.path.join(tmp, "k.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    out = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-sass", path],
                         capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", out)
    c = Counter()
    for op in ops:
        head = op.split(".")[0]
        if head in ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "LDSM", "LDS", "STS"):
            c[head] += 1
            c["LDGSTS.128"] += head == "LDGSTS" and ".128" in op
        elif head == "LDG":
            c["LDG"] += 1
            c["LDG.128"] += ".128" in op
        elif op.startswith("MUFU.EX2"):
            c["MUFU.EX2"] += 1
        elif op.startswith("BAR.SYNC"):
            c["BAR.SYNC"] += 1
    res = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", path],
                         capture_output=True, text=True, check=True).stdout
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", res)}
    return c, len(ops), usage, first_step_length(out)


def first_step_length(sass: str) -> int | None:
    """Instructions in one step of the kernel's first (FULL tile) loop: of the loops (spans
    closed by a backward branch) that issue matrix products, the innermost ones (holding no
    other such span), the first by address."""
    loops = innermost_loops(sass, ("HGMMA", "HMMA"))
    return len(loops[0]) if loops else None


def measure_row(fn, sig, cx, ints, warps, stages, tmp: str) -> tuple[str, list]:
    """(PTX target, the table cells after kernel and config) of one compiled kernel."""
    k = compile_row(fn, sig, cx, ints, warps, stages)
    arch, regs, sst, sld, _stack = ptxas_usage(k.asm["ptx"], tmp)
    c, total, use, step = sass_counts(k.asm["cubin"], tmp)
    md = k.metadata
    if use.get("REG") != regs:
        raise RuntimeError(f"the cubin's REG {use.get('REG')} differs from ptxas -v's {regs}")
    if (md.num_warps, md.num_stages) != (warps, stages):
        raise RuntimeError(f"compiled with {md.num_warps} warps / {md.num_stages} stages, "
                           f"asked {warps} / {stages}")
    smem = md.shared + use.get("SHARED", 0)  # dynamic + static (1 KB reserved)
    regs_alloc = -(-regs // REGISTER_GRANULE) * REGISTER_GRANULE
    by_reg = SM_REGISTERS // (regs_alloc * WARP_SIZE * md.num_warps)
    by_smem = SM_SHARED_BYTES // smem
    occ = min(by_reg, by_smem, SM_WARPS // md.num_warps, SM_CTAS)
    return arch, ([regs, f"{sst}/{sld}/{use.get('LOCAL')}", smem, f"{occ} (r{by_reg},s{by_smem})"]
                  + [c[x] for x in COUNTS] + [total, step])


def report(only: str | None = None) -> tuple[str, int]:
    """(the report text, number of rows that failed to compile); ``only``: rows whose kernel
    name contains it."""
    out = [f"triton {triton.__version__}; target {TARGET}; ptxas/cuobjdump from {BIN}",
           f"bf16, HEAD_DIM={D}, N={N}, H={H}; IN_PREC='tf32' (ignored for bf16 dots); "
           "MERGE/ACCUM off; one row = one kernel (FULL+CAUSAL+MASKED loops together)",
           "LDG.128 / LDGSTS.128 = 16-byte loads / cp.async (subsets of LDG / LDGSTS); "
           "LDSM = ldmatrix; regs/spills from ptxas -v (regs checked against the cubin's REG);",
           "lmem = cubin LOCAL bytes/thread; smem = bytes/CTA: Triton's dynamic shared + the "
           "cubin's static SHARED (the 1 KB per-CTA reservation)", ""]
    cols = ["kernel", "config", "regs", "spill st/ld/lmem", "smem", "occ"] + COUNTS + [
        "instrs", "step"]
    rows, errors, arches = [], [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn, sig, cx, ints, warps, stages, cfg in kernel_rows():
            if only and only not in name:
                continue
            try:
                arch, cells = measure_row(fn, sig, cx, ints, warps, stages, tmp)
                arches.add(arch)
                rows.append([name, cfg, *cells])
            except Exception as exc:  # noqa: BLE001 - every row is data
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
                rows.append([name, cfg, "ERROR"] + [""] * (len(cols) - 3))
                errors.append(f"{name} [{cfg}]: {msg}")
    out += [f"PTX target: {', '.join(sorted(arches)) or 'none compiled'}", ""]
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]

    def fmt(r):
        return "  ".join(str(v).rjust(w) if i > 1 else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(r, widths)))

    out += [fmt(cols), "-" * len(fmt(cols)), *(fmt(r) for r in rows), ""]
    out.append("step = instructions in one step of the first (FULL tile) loop "
               "(first_step_length)")
    out.append(f"occ = resident CTAs per SM on an H200 (min of the register limit r, shared "
               f"memory limit s, {SM_WARPS} warps/SM, {SM_CTAS} CTAs/SM)")
    out += [f"ERROR {e}" for e in errors]
    return "\n".join(out) + "\n", len(errors)
