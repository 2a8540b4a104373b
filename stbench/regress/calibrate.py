"""Reference kernels timed beside the kernels under test, so that ``stbench regress`` can take
the machine's drift out of a comparison with a baseline measured on another day.

    matmul     a bf16 matrix product M x M x M (tensor-core bound; at 8192^3 it
               reaches 709 TFLOP/s on the H200)
    copy       a device-to-device copy of COPY bytes (memory bound; 4.24 TB/s there)
    sdpa_fwd   the peer SDPA (FlashAttention) on the causal standard problem at N_SDPA, forward
    sdpa_fwd+bwd  the same, forward and backward

A pass times each of them with the same timer as the kernels; the geometric mean of their times
is that pass's reference unit, and every kernel time of the pass is divided by it. Clock,
power or thermal drift that slows the whole GPU cancels; a slower kernel does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stbench import backends
from stbench.problems import Problem, batch_for, layout_spec
from stbench.tuning.measure import BenchSettings, closure

from .sample import make_inputs, one_line

GPU_MATMUL = 4096  # 4096^3 bf16: ~0.2 ms on an H200
GPU_COPY_BYTES = 256 * 2**20  # twice the H200's L2 many times over: ~0.12 ms
GPU_SDPA_N = 4096  # the regress set's smaller N, B = 16
CPU_MATMUL = 64  # on a machine without a GPU (tests): small and quick
CPU_COPY_BYTES = 2**20
CPU_SDPA_N = 128
CPU_SDPA_BATCH = 1


@dataclass(frozen=True)
class Sizes:
    matmul: int
    copy_bytes: int
    sdpa_n: int
    sdpa_batch: int | None = None  # None: the standard problem's B = 65536 / N


def default_sizes(device) -> Sizes:
    if torch.device(device).type == "cuda":
        return Sizes(GPU_MATMUL, GPU_COPY_BYTES, GPU_SDPA_N)
    return Sizes(CPU_MATMUL, CPU_COPY_BYTES, CPU_SDPA_N, CPU_SDPA_BATCH)


@dataclass(frozen=True)
class Reference:
    """A zero-argument callable to time, and the tensors whose grads are reset before each call."""

    name: str
    run: Callable[[], object]
    grads: tuple[torch.Tensor, ...] = ()


def references(device, sizes: Sizes, seed: int = 0) -> tuple[list[Reference], list[str]]:
    """(the reference kernels that can run here, one line per one that cannot)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = sizes.matmul
    a, b = (torch.randn(m, m, generator=g, device=device).to(dtype) for _ in range(2))
    src = torch.empty(sizes.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    refs = [Reference("matmul", lambda: a @ b), Reference("copy", lambda: dst.copy_(src))]
    skipped = []
    spec = layout_spec("causal")
    try:
        module = backends.load("sdpa")
        for mode in ("fwd", "fwd+bwd"):
            prob = Problem(spec, sizes.sdpa_n, sizes.sdpa_batch or batch_for(sizes.sdpa_n),
                           dtype="bfloat16" if device.type == "cuda" else "float32", mode=mode)
            layout = prob.build_layout()
            inp = make_inputs(prob, device, seed)
            run = closure(module, *inp.qkv, layout, prob.head_dim ** -0.5, None, mode, inp.do)
            refs.append(Reference(f"sdpa_{mode}", run, inp.qkv if mode == "fwd+bwd" else ()))
    except Exception as exc:  # noqa: BLE001 - a missing peer leaves the calibration kernels
        skipped.append(f"sdpa: {one_line(exc)}")
    return refs, skipped


def time_reference(ref: Reference, device, settings: BenchSettings) -> float | None:
    """Median ms of one reference kernel, None when it fails."""
    from stbench import timing

    try:
        t = timing.bench(ref.run, warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms,
                         flush_l2=settings.flush_l2, min_reps=settings.min_reps,
                         grad_to_none=list(ref.grads) or None, device=device,
                         hide_host=settings.hide_host)
    except Exception:  # noqa: BLE001 - a failing reference drops out of the unit
        return None
    finally:
        for t_ in ref.grads:
            t_.grad = None
    return t.median_ms
