"""Kernel variants of the CuPy backend: their CUDA source, their defines, their compiled modules.

A ``Variant`` names one compilation of one ``.cu`` file of this folder: the element type, the
head dimension, the layout block, the tile sizes and the two plan features that change the
code (a token permutation; PARTIAL blocks reading a bitmask). Its ``source()`` is the ``.cu``
text with the local headers (``st_*.cuh``) pasted in, so the text alone determines the binary;
its ``options()`` are the NVRTC options (``-D`` defines). The same source and defines
feed NVRTC through ``cupy.RawModule`` on the GPU and ``nvcc`` in the CPU build test
(``nvcc_command``), so what CI compiles is what runs.

Caching: ``load_module`` keeps one ``cupy.RawModule`` per (variant, device) in memory
(``functools.lru_cache``; the device's architecture is fixed per device). On disk CuPy caches
every NVRTC compilation under ``$CUPY_CACHE_DIR`` (default ``~/.cupy/kernel_cache``), keyed by
a hash of the source text, the options, the architecture and the NVRTC version; since headers
are pasted into the source, editing a ``.cuh`` invalidates that cache as it should.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch

KERNEL_DIR = Path(__file__).resolve().parent
COMMON_HEADER = "st_common.cuh"

# ST_DTYPE codes shared with st_common.cuh
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DTYPE_NAMES = {0: "fp32", 1: "fp16", 2: "bf16"}

# kernel family -> (file, kernel names in it)
FILES = {
    "fwd_mma": ("st_fwd_mma.cu", ("st_fwd_mma",)),
    "fwd_wgmma": ("st_fwd_wgmma.cu", ("st_fwd_wgmma",)),
    "bwd_mma": ("st_bwd_mma.cu", ("st_bwd_dq", "st_bwd_dkv", "st_bwd_delta")),
    "scalar": ("st_scalar.cu", ("st_fwd_scalar", "st_bwd_dq_scalar", "st_bwd_dkv_scalar",
                                "st_bwd_delta")),
}
# kernel family -> the architecture it must be compiled for, where it needs one (wgmma exists
# only on the arch-specific target sm_90a, whose code runs on compute capability 9.0 alone);
# other families build for the device's own architecture (CuPy picks it)
ARCH = {"fwd_wgmma": "sm_90a"}
SCALAR_ROWS = 8  # SC_ROWS in st_scalar.cu: rows (warps) per CTA of the scalar kernels
DELTA_ROWS = 8  # ST_DELTA_ROWS in st_delta.cuh: rows (warps) per CTA of st_bwd_delta
MMA_MAX_HEAD_DIM = 128  # registers: Q and O fragments take 3 * HEAD_DIM / 4 words per thread
SCALAR_MAX_HEAD_DIM = 128  # shared memory: two fp32 chunks of 32 rows in 48 KB


@dataclass(frozen=True)
class Variant:
    """One compilation of one kernel file. ``block_m`` / ``block_n`` are ignored (0) for the
    scalar file, whose tiles are fixed (SCALAR_ROWS rows, min(32, block) streamed)."""

    family: str  # key of FILES
    dtype_code: int  # ST_DTYPE
    head_dim: int
    layout_block: int
    block_m: int = 0
    block_n: int = 0
    permuted: bool = False
    has_partial: bool = False
    m_tiles: int = 1  # 16-row tiles per warp (forward kernel only)

    def __post_init__(self):
        if self.family not in FILES:
            raise ValueError(f"family={self.family!r}: choose one of {', '.join(FILES)}")
        if self.dtype_code not in DTYPE_NAMES:
            raise ValueError(f"dtype_code={self.dtype_code}: use 0 (fp32), 1 (fp16), 2 (bf16)")
        if self.family != "scalar" and self.dtype_code == 0:
            raise ValueError("the tensor-core kernels take fp16 / bf16; fp32 uses family 'scalar'")
        wgmma_shape = (self.head_dim, self.block_m, self.block_n)
        if self.family == "fwd_wgmma" and wgmma_shape not in ((64, 64, 64), (64, 128, 64)):
            raise ValueError("the wgmma forward is compiled for head dim 64, BLOCK_M 64 or 128 "
                             "and BLOCK_N 64 only")
        if self.m_tiles != 1 and self.family != "fwd_mma":
            raise ValueError(f"m_tiles={self.m_tiles}: only the forward kernel takes m_tiles > 1")

    @property
    def path(self) -> Path:
        return KERNEL_DIR / FILES[self.family][0]

    @property
    def arch(self) -> str | None:
        """The architecture this variant must be compiled for (None: the device's own)."""
        return ARCH.get(self.family)

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return FILES[self.family][1]

    def defines(self) -> tuple[str, ...]:
        d = [
            f"ST_DTYPE={self.dtype_code}",
            f"HEAD_DIM={self.head_dim}",
            f"LAYOUT_BLOCK={self.layout_block}",
            f"PERMUTED={int(self.permuted)}",
            f"HAS_PARTIAL={int(self.has_partial)}",
        ]
        if self.family != "scalar":
            d += [f"BLOCK_M={self.block_m}", f"BLOCK_N={self.block_n}"]
        if self.family == "fwd_mma":
            d.append(f"M_TILES={self.m_tiles}")
        return tuple(d)

    def options(self) -> tuple[str, ...]:
        """NVRTC options. CuPy appends the device's ``-arch=sm_XY``; a variant with an ``arch``
        names it here too, and NVRTC 13 then builds for the arch-specific target
        (tests/kernels/test_cupy_compile.py: the wgmma forward compiles with CuPy's options
        appended, which it could not on plain sm_90)."""
        return nvrtc_options(self.defines(), self.arch)

    def source(self, swap: tuple[tuple[str, str], ...] = ()) -> str:
        return read_source(self.path.name, swap)

    def label(self) -> str:
        tiles = "" if self.family == "scalar" else f"_m{self.block_m}n{self.block_n}"
        if self.m_tiles != 1:
            tiles += f"w{16 * self.m_tiles}"
        return (
            f"{self.family}_{DTYPE_NAMES[self.dtype_code]}_d{self.head_dim}_b{self.layout_block}"
            f"{tiles}{'_perm' if self.permuted else ''}{'_partial' if self.has_partial else ''}"
        )


_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.M)


def read_source(filename: str, swap: tuple[tuple[str, str], ...] = ()) -> str:
    """The text of ``filename`` with local ``#include "x.cuh"`` lines replaced, recursively, by
    the header's text (each header once). ``swap`` maps a header to another file pasted in its
    place (the CPU emulation swaps st_intrinsics.cuh for st_cpu_emu.cuh)."""
    return _read_source(filename, swap)


@functools.lru_cache(maxsize=None)
def _read_source(filename: str, swap: tuple[tuple[str, str], ...]) -> str:
    replace = dict(swap)
    seen: set[str] = set()

    def expand(name: str) -> str:
        text = (KERNEL_DIR / replace.get(name, name)).read_text()
        return _INCLUDE.sub(lambda m: paste(m.group(1)), text)

    def paste(name: str) -> str:
        if name in seen:
            return f"// ---- {name} already included"
        seen.add(name)
        body = expand(name).replace("#pragma once\n", "")
        return f"// ---- begin {name}\n{body}// ---- end {name}"

    return expand(filename)


def nvrtc_options(defines, arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options for a source compiled with ``defines`` (NAME=VALUE strings); ``arch``: an
    architecture the source needs (None: CuPy's choice, the device's own)."""
    arch_opt = (f"--gpu-architecture={arch}",) if arch else ()
    return ("-std=c++17", *arch_opt, *(f"-D{d}" for d in defines))


def nvcc_args(defines, src_path: str, out_path: str, arch: str,
              extra: tuple[str, ...] = ()) -> list[str]:
    """The nvcc command that compiles ``src_path`` to a cubin for ``arch`` with the same
    language standard and defines NVRTC gets (``nvrtc_options``)."""
    return ["nvcc", f"-arch={arch}", "-std=c++17", "-cubin", "-o", out_path,
            *(f"-D{d}" for d in defines), *extra, src_path]


def nvcc_command(variant: Variant, src_path: str, out_path: str, arch: str | None = None,
                 extra: tuple[str, ...] = ()) -> list[str]:
    """The nvcc command that compiles ``variant``'s pasted source (written to ``src_path``) to a
    cubin, with the same defines NVRTC gets; ``arch``: the variant's own, else sm_90 (H200)."""
    return nvcc_args(variant.defines(), src_path, out_path, arch or variant.arch or "sm_90", extra)


@functools.lru_cache(maxsize=256)
def load_module(variant: Variant, device_index: int):
    """The compiled ``cupy.RawModule`` of ``variant`` for CUDA device ``device_index``."""
    import cupy

    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=variant.source(), options=variant.options(), backend="nvrtc"
        )
        module.compile()  # compile now, so errors surface here and not at the first launch
    return module


def get_kernel(variant: Variant, name: str, device_index: int):
    """The ``cupy.RawKernel`` ``name`` of ``variant`` on device ``device_index``."""
    if name not in variant.kernel_names:
        raise ValueError(f"kernel {name!r} is not in {variant.path.name}")
    return load_module(variant, device_index).get_function(name)


def _compile_in_worker(args: tuple[Variant, int]) -> tuple[str, str | None]:
    variant, device_index = args
    try:
        load_module(variant, device_index)
        return variant.label(), None
    except Exception as exc:  # noqa: BLE001  (reported per variant by the caller)
        return variant.label(), f"{type(exc).__name__}: {exc}"[:2000]


def precompile(variants, device_index: int = 0, workers: int = 8) -> dict[str, str | None]:
    """Compile ``variants`` in ``workers`` processes so CuPy's disk cache holds them; the calling
    process then only loads cubins. Returns {label: None or the error}. NVRTC takes about 1-3 s a
    variant; this is how the GPU tests keep many variants within their time budget."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    todo = list(dict.fromkeys(variants))
    if not todo:
        return {}
    if workers <= 1 or len(todo) == 1:
        return dict(_compile_in_worker((v, device_index)) for v in todo)
    ctx = mp.get_context("spawn")  # CUDA state must not be forked
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
        return dict(pool.map(_compile_in_worker, [(v, device_index) for v in todo]))
