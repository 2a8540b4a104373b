"""The wgmma probe (``probes/st_wgmma_probe.cu``): its cases, source, build options and
references, shared by the GPU test (``test_wgmma_probe_confirms_the_reading``) and the CPU tests.

Each case launches one single-warpgroup kernel (one CTA of 128 threads) on 64 x 64 tiles and
compares the product with torch. The descriptors' LBO / SBO are launch arguments: the cases
marked ``follows_reading`` use this project's reading of the PTX ISA (``st_wgmma.cuh``), the
``_swapped`` ones exchange LBO and SBO. If the reading is right, every reading case matches and
no swapped case does (``verdict``); if a swapped case matches instead, the reading had the two
offsets the wrong way round for that major-ness, and the JSON says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import compile as cc
from .compile import DTYPE_CODES, read_source

PROBE_FILE = "probes/st_wgmma_probe.cu"
TILE = 64  # every operand is TILE x TILE
THREADS = 128  # one warpgroup
ARCH = cc.ARCH["fwd_wgmma"]  # wgmma exists only on the arch-specific target sm_90a
KMAJOR = (128, 1024)  # (LBO, SBO) bytes, K-major tile: next 8 of d, next 8 rows
MNMAJOR = (1024, 128)  # (LBO, SBO) bytes, MN-major tile: next 8 keys, next 8 of d
KERNELS = ("wg_probe_ss_k", "wg_probe_ss_mn", "wg_probe_rs_mn", "wg_probe_chain")
# exact fp32 products of 16-bit inputs, 64-term sums of N(0, 1) products (|D| ~ 8): fp32
# summation order differs by ~1e-5; a wrong layout or fragment gives O(1) errors
ATOL, RTOL = 2e-3, 1e-3


@dataclass(frozen=True)
class ProbeCase:
    name: str
    kernel: str
    lbo_a: int
    sbo_a: int
    lbo_b: int
    sbo_b: int
    product: str  # "a_bt": A B^T;  "a_b": A B;  "chain": S = A B^T, then O = dtype(S) C
    follows_reading: bool

    def args(self) -> tuple[int, int, int, int]:
        return self.lbo_a, self.sbo_a, self.lbo_b, self.sbo_b


def _swap(p: tuple[int, int]) -> tuple[int, int]:
    return p[1], p[0]


CASES = (
    ProbeCase("ss_kmajor", "wg_probe_ss_k", *KMAJOR, *KMAJOR, "a_bt", True),
    ProbeCase("ss_mnmajor_b", "wg_probe_ss_mn", *KMAJOR, *MNMAJOR, "a_b", True),
    ProbeCase("rs_mnmajor_b", "wg_probe_rs_mn", 0, 0, *MNMAJOR, "a_b", True),
    # the kernel gives C (MN-major) the B pair swapped back: (1024, 128) here
    ProbeCase("chain_s_then_pv", "wg_probe_chain", *KMAJOR, *KMAJOR, "chain", True),
    ProbeCase("ss_kmajor_swapped", "wg_probe_ss_k", *_swap(KMAJOR), *_swap(KMAJOR), "a_bt",
              False),
    ProbeCase("ss_mnmajor_b_swapped", "wg_probe_ss_mn", *KMAJOR, *_swap(MNMAJOR), "a_b", False),
    ProbeCase("rs_mnmajor_b_swapped", "wg_probe_rs_mn", 0, 0, *_swap(MNMAJOR), "a_b", False),
)


def defines(dtype: torch.dtype) -> tuple[str, ...]:
    return (f"ST_DTYPE={DTYPE_CODES[dtype]}", f"HEAD_DIM={TILE}", f"LAYOUT_BLOCK={TILE}")


def source() -> str:
    return read_source(PROBE_FILE)


def nvrtc_options(dtype: torch.dtype, arch: str = ARCH) -> tuple[str, ...]:
    return cc.nvrtc_options(defines(dtype), arch)


def nvcc_command(dtype: torch.dtype, src_path: str, out_path: str, arch: str = ARCH) -> list[str]:
    return cc.nvcc_args(defines(dtype), src_path, out_path, arch)


def inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """a, b, c: TILE x TILE in ``dtype`` (CPU), N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(TILE, TILE, generator=g).to(dtype) for _ in range(3))


def reference(case: ProbeCase, a, b, c, d_kernel: torch.Tensor | None = None) -> torch.Tensor:
    """What ``d`` (``d2`` for the chain) must hold, float64. The chain's O is checked against
    the kernel's own S rounded to the input dtype (S itself is checked as ``d``), so a
    one-ulp rounding difference of S cannot fail it."""
    a64, b64, c64 = (x.double() for x in (a, b, c))
    if case.product == "a_bt":
        return a64 @ b64.T
    if case.product == "a_b":
        return a64 @ b64
    assert d_kernel is not None
    return d_kernel.to(a.dtype).double() @ c64


def compare(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, float]:
    err = (got.double().cpu() - want).abs()
    ok = bool((err <= ATOL + RTOL * want.abs()).all()) and bool(torch.isfinite(got).all())
    return ok, float(err.max())


def judge(case: ProbeCase, a, b, c, d: torch.Tensor, d2: torch.Tensor) -> dict:
    """One JSON-able row: whether the kernel's output matches, and for the chain both halves."""
    if case.product == "chain":
        ok_s, err_s = compare(d, reference(ProbeCase(**{**case.__dict__, "product": "a_bt"}),
                                           a, b, c))
        ok_o, err_o = compare(d2, reference(case, a, b, c, d.cpu()))
        ok, err = ok_s and ok_o, max(err_s, err_o)
        extra = {"s_match": ok_s, "s_max_abs_err": err_s, "o_match": ok_o, "o_max_abs_err": err_o}
    else:
        ok, err = compare(d, reference(case, a, b, c))
        extra = {}
    return {"case": case.name, "kernel": case.kernel, "lbo_a": case.lbo_a, "sbo_a": case.sbo_a,
            "lbo_b": case.lbo_b, "sbo_b": case.sbo_b, "follows_reading": case.follows_reading,
            "match": ok, "max_abs_err": err, **extra}


def verdict(rows: list[dict]) -> str:
    """'reading confirmed' when every reading case matches and no swapped one does."""
    reading = [r for r in rows if r["follows_reading"]]
    swapped = [r for r in rows if not r["follows_reading"]]
    if reading and all(r.get("match") for r in reading) and not any(r.get("match") for r in swapped):
        return "reading confirmed"
    bad = [r["case"] for r in reading if not r.get("match")]
    alt = [r["case"] for r in swapped if r.get("match")]
    return f"reading NOT confirmed: failing {bad}; swapped cases that match {alt}"
