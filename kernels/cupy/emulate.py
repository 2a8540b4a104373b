"""Run the CuPy backend's CUDA kernels on the CPU (g++, one fiber per CUDA thread), for tests
on machines without a GPU.

The kernel source is the backend's own (``Variant.source``) with ``st_intrinsics.cuh`` (inline
PTX) swapped for ``st_cpu_emu.cuh`` (the same functions in C++, mma.sync emulated per warp from
the PTX fragment layouts), compiled to a shared library and called through ctypes with the
arguments the GPU launcher builds (``kernel_args.fwd_args`` / ``dq_args`` / ``dkv_args``), in its
launch geometry. So a CPU test exercises the kernels' indexing, plan walking, masks,
permutation, online softmax and fragment bookkeeping; what it cannot see is the hardware itself
(real PTX semantics, races, bank conflicts, speed). Tiny shapes only: N of a few hundred.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

from stbench.layouts import Layout, plan_for

from .compile import Variant, read_source
from .config import resolve_config
from .kernel_args import (
    KERNEL_NAMES, LOG2E, delta_args, delta_geometry, dkv_args, dq_args, fwd_args,
    launch_geometry, plan_args, plan_flags, variants_for,
)

EMU_SWAP = (("st_intrinsics.cuh", "st_cpu_emu.cuh"), ("st_wgmma_ptx.cuh", "st_wgmma_emu.cuh"))
CXX = os.environ.get("CXX", "g++")
PRIVATE_MODE = 0o700  # the built libraries are loaded into this process: only their owner writes


@functools.lru_cache(maxsize=1)
def build_dir() -> Path:
    """Where built libraries are cached: ``$STBENCH_CACHE_DIR/cupy_emu``, else
    ``~/.cache/stbench/cupy_emu`` (never a fixed path in the shared temp directory), used only
    when it is a real folder (not a link) owned by this user, and made mode 0700; otherwise a
    fresh private ``tempfile.mkdtemp()`` for this process."""
    root = os.environ.get("STBENCH_CACHE_DIR")
    path = (Path(root) if root else Path.home() / ".cache" / "stbench") / "cupy_emu"
    try:
        path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            if stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
                os.chmod(path, PRIVATE_MODE)
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="stbench_cupy_emu_"))


def available() -> str | None:
    """None if the emulation can build here, else why not."""
    if shutil.which(CXX) is None:
        return f"no C++ compiler ({CXX}) on PATH"
    return None


def _with_wrappers(text: str, kernel_names) -> str:
    wrappers = "\n".join(
        f'extern "C" void emu_{name}(int gx, int gy, int nt, void** args) '
        f"{{ st_emu::launch({name}, gx, gy, nt, args); }}"
        for name in kernel_names
    )
    return text + "\n" + wrappers + "\n"


def emu_source(variant: Variant) -> str:
    return _with_wrappers(variant.source(EMU_SWAP), variant.kernel_names)


def _build(label: str, src: str, defines) -> ctypes.CDLL:
    flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-w"]
    flags += [f"-D{d}" for d in defines]
    key = hashlib.blake2b((src + " ".join(flags)).encode(), digest_size=12).hexdigest()
    folder = build_dir()
    lib = folder / f"{label}_{key}.so"
    if not lib.exists():  # built under this process's own names, then moved in place at once
        cpp = folder / f"{label}_{key}.{os.getpid()}.cpp"
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cpp.write_text(src)
        try:
            res = subprocess.run([CXX, *flags, "-x", "c++", str(cpp), "-o", str(tmp)],
                                 capture_output=True, text=True)
        finally:
            cpp.unlink()
        if res.returncode:
            raise RuntimeError(f"emulation build of {label} failed:\n{res.stderr[-3000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


@functools.lru_cache(maxsize=64)
def load(variant: Variant) -> ctypes.CDLL:
    """The variant built as a CPU shared library (cached on disk by source hash)."""
    return _build(variant.label(), emu_source(variant), variant.defines())


@functools.lru_cache(maxsize=8)
def load_wgmma_probe(dtype: torch.dtype) -> ctypes.CDLL:
    """The wgmma probe kernels (``probes/st_wgmma_probe.cu``) built for the CPU."""
    from . import wgmma_probe

    src = _with_wrappers(read_source(wgmma_probe.PROBE_FILE, EMU_SWAP), wgmma_probe.KERNELS)
    return _build(f"wgmma_probe_{str(dtype).removeprefix('torch.')}", src,
                  wgmma_probe.defines(dtype))


def run_wgmma_probe(case, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """(d, d2) float32 TILE x TILE: ``case`` (a wgmma_probe.ProbeCase) on the CPU emulation."""
    from . import wgmma_probe

    n = wgmma_probe.TILE
    d, d2 = torch.zeros(n, n), torch.zeros(n, n)
    args = _Args()
    vals = [args.arr(_as_bits(x)) for x in (a, b, c)] + [args.arr(d), args.arr(d2)]
    getattr(load_wgmma_probe(a.dtype), f"emu_{case.kernel}")(
        1, 1, wgmma_probe.THREADS, args.pack([*vals, *case.args()]))
    return d, d2


class _Args:
    """Holds ctypes values alive and hands out a void** array, like cuLaunchKernel's params."""

    def __init__(self):
        self.keep: list = []

    def arr(self, t: torch.Tensor | None):
        if t is None or t.numel() == 0:
            t = torch.zeros(1, dtype=torch.int32)
        assert t.is_contiguous() and t.device.type == "cpu"
        self.keep.append(t)
        return ctypes.c_void_p(t.data_ptr())

    def pack(self, values) -> ctypes.Array:
        boxed = []
        for v in values:
            if isinstance(v, ctypes.c_void_p):
                boxed.append(v)
            elif isinstance(v, int):
                boxed.append(ctypes.c_int(v))
            elif isinstance(v, float):
                boxed.append(ctypes.c_float(v))
            else:
                raise TypeError(f"unexpected kernel argument {type(v).__name__}")
        self.keep.extend(boxed)
        ptrs = (ctypes.c_void_p * len(boxed))(
            *[ctypes.cast(ctypes.pointer(b), ctypes.c_void_p) for b in boxed]
        )
        self.keep.append(ptrs)
        return ptrs


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) \
        else t.contiguous()


def run(q, k, v, layout: Layout, scale: float, config: dict | None = None, dout=None):
    """(out, lse) and, when ``dout`` is given, (dq, dk, dv): the backend's kernels on the CPU.
    q, k, v, dout: CPU tensors [B, H, N, D] in float16 / bfloat16 / float32."""
    b, h, n, d = q.shape
    cfg = resolve_config(config, layout.block, d, q.dtype, (9, 0))
    plan = plan_for(layout, "cpu")
    fwd_v, bwd_v = variants_for(cfg, q.dtype, d, layout.block, *plan_flags(plan))
    fwd_name, dq_name, dkv_name = KERNEL_NAMES[cfg["kernel"]]
    grid, fwd_block, bwd_block = launch_geometry(cfg, n, b * h)
    args = _Args()
    fwd_plan, bwd_plan = plan_args(plan, args.arr)
    ints = (h, n)
    scale_log2 = float(scale * LOG2E)
    qb, kb, vb = _as_bits(q), _as_bits(k), _as_bits(v)
    out = torch.empty_like(qb)
    lse = torch.empty(b, h, n, dtype=torch.float32)
    lib = load(fwd_v)
    getattr(lib, f"emu_{fwd_name}")(
        grid[0], grid[1], fwd_block[0],
        args.pack(fwd_args(args.arr, qb, kb, vb, out, lse, fwd_plan, ints, scale_log2)),
    )
    out_t = out.view(q.dtype)
    if dout is None:
        return out_t, lse
    dob = _as_bits(dout.to(q.dtype))
    delta = kernel_delta(bwd_v, dob, out)
    dq, dk, dv = torch.empty_like(qb), torch.empty_like(kb), torch.empty_like(vb)
    lib = load(bwd_v)
    getattr(lib, f"emu_{dq_name}")(
        grid[0], grid[1], bwd_block[0],
        args.pack(dq_args(args.arr, qb, kb, vb, dob, lse, delta, dq, fwd_plan, ints,
                                  float(scale), scale_log2)),
    )
    getattr(lib, f"emu_{dkv_name}")(
        grid[0], grid[1], bwd_block[0],
        args.pack(dkv_args(args.arr, qb, kb, vb, dob, lse, delta, dk, dv, bwd_plan, ints,
                                   float(scale), scale_log2)),
    )
    return out_t, lse, (dq.view(q.dtype), dk.view(q.dtype), dv.view(q.dtype))


def kernel_delta(variant: Variant, dout_bits: torch.Tensor,
                 out_bits: torch.Tensor) -> torch.Tensor:
    """delta float32 [B, H, N] from the kernel st_bwd_delta of ``variant`` (a backward module)
    on the CPU; dout_bits, out_bits [B, H, N, D] as ``_as_bits`` leaves them."""
    b, h, n, _ = dout_bits.shape
    delta = torch.empty(b, h, n, dtype=torch.float32)
    args = _Args()
    grid, block = delta_geometry(b * h * n)
    load(variant).emu_st_bwd_delta(
        grid[0], grid[1], block[0],
        args.pack(delta_args(args.arr, dout_bits.contiguous(), out_bits.contiguous(),
                                     delta, b * h * n)))
    return delta


class _Emulated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, scale, config):
        ctx.save_for_backward(q, k, v)
        ctx.args = (layout, scale, config)
        return run(q, k, v, layout, scale, config)[0]

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        _, _, grads = run(q, k, v, *ctx.args, dout=dout)
        return (*grads, None, None, None)


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """The backend's ``attention`` with the kernels emulated on the CPU (differentiable; the
    backward re-runs the forward kernel for lse)."""
    return _Emulated.apply(q, k, v, layout, scale, config)
