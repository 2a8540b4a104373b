"""One timer for every backend, plus the FLOP counts that turn times into TFLOP/s.

``bench(fn)`` follows ``triton.testing.do_bench``: one untimed call, a runtime estimate from a few
calls, a warm-up of ``warmup_ms``, then ``rep_ms`` worth of repetitions, each timed on its own
(CUDA events around the call, the L2 cache flushed before it by writing a 256 MB buffer), and the
median with the 20th / 80th percentiles. ``hide_host=True`` measures device time only: each
repetition's start event is queued behind a spin kernel that outlasts the call's host work
(Python, checks, launches), so the kernels run back to back and host jitter never enters the
interval; the kernel-regression gates time this way (a call's host overhead is not a kernel's).
On the CPU (no CUDA device, or ``device='cpu'``) the same interface times with
``time.perf_counter`` and does not flush caches.

Compilation and planning happen on a kernel's first call; ``time_prepare`` (or ``timed_call``)
times that call on its own, reported as ``prepare_ms`` and never inside the kernel time.

FLOPs (DESIGN.md "Measuring"), the same numerator for every backend:
    forward       4 * B * D * allowed_pairs      (QK^T and PV: 2 multiply-adds per pair per d)
    fwd+bwd       3.5 x forward                  (backward: 5 matmuls against forward's 2)
and the block-level work a backend actually does: ``nnz * block^2`` pairs instead of
``allowed_pairs``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

MODES = ("fwd", "fwd+bwd")
FWD_BWD_FACTOR = 3.5  # forward 2 matmuls, backward 5 (dV, dP, dS->dQ, dK, recompute S): 7 / 2
FLOPS_PER_PAIR_PER_DIM = 4  # 2 multiply-adds (q.k and p*v) = 4 flops per (q, k) pair per dim
L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any GPU's L2 (H200: 60 MB), as do_bench does
ESTIMATE_CALLS = 5  # calls used to estimate one call's runtime (do_bench uses 5)
SPIN_CALIBRATION_CYCLES = 10_000_000  # about 5 ms at 2 GHz
_SPIN_RATE: dict[int, float] = {}  # device index -> torch.cuda._sleep cycles per ms


@dataclass(frozen=True)
class Timing:
    """Quantiles of one function's runtime in milliseconds over ``reps`` timed repetitions.
    ``p20_ms`` / ``p80_ms`` hold the low / high quantiles asked for (0.2 / 0.8 by default)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    device: str = "cpu"  # "cuda" (device events) or "cpu" (perf_counter)


def _quantile(sorted_times: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, as torch.quantile / numpy's default."""
    if not sorted_times:
        raise ValueError("no times to summarise")
    pos = q * (len(sorted_times) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_times) - 1)
    return sorted_times[lo] + (sorted_times[hi] - sorted_times[lo]) * (pos - lo)


def _check_quantiles(quantiles) -> tuple[float, float, float]:
    q = tuple(float(x) for x in quantiles)
    if len(q) != 3 or not (0.0 <= q[0] <= 0.5 == q[1] <= q[2] <= 1.0):
        raise ValueError(
            f"quantiles={quantiles!r} must be (low, 0.5, high) with 0 <= low <= 0.5 <= high <= 1, "
            "for example (0.2, 0.5, 0.8)"
        )
    return q


def _use_cuda(device) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def summarize(times_ms: Sequence[float], quantiles=(0.2, 0.5, 0.8), device: str = "cpu") -> Timing:
    """Timing from raw per-repetition times (ms)."""
    lo, mid, hi = _check_quantiles(quantiles)
    s = sorted(float(t) for t in times_ms)
    return Timing(_quantile(s, mid), _quantile(s, lo), _quantile(s, hi), len(s), device)


def bench(
    fn: Callable[[], object],
    *,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    flush_l2: bool = True,
    quantiles=(0.2, 0.5, 0.8),
    min_reps: int = 3,
    max_reps: int = 10_000,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    device=None,
    hide_host: bool = False,
) -> Timing:
    """Time ``fn()`` (a zero-argument callable that launches the work).

    warmup_ms / rep_ms: time budgets for warm-up and timed repetitions (``do_bench``'s
    ``warmup`` / ``rep``); the repetition count is ``clamp(rep_ms / estimate, min_reps,
    max_reps)``. grad_to_none: tensors whose ``.grad`` is reset before each repetition (a
    forward+backward closure must not accumulate gradients). device: where ``fn`` runs (default:
    CUDA if available). hide_host: device time only (module docstring; CUDA only). Returns
    median, low and high quantiles in ms.
    """
    _check_quantiles(quantiles)
    if warmup_ms < 0 or rep_ms <= 0:
        raise ValueError(f"warmup_ms={warmup_ms} must be >= 0 and rep_ms={rep_ms} > 0")
    if not 1 <= min_reps <= max_reps:
        raise ValueError(f"need 1 <= min_reps={min_reps} <= max_reps={max_reps}")
    if _use_cuda(device):
        times = _bench_cuda(fn, warmup_ms, rep_ms, flush_l2, min_reps, max_reps, grad_to_none,
                            hide_host)
        return summarize(times, quantiles, "cuda")
    times = _bench_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps, grad_to_none)
    return summarize(times, quantiles, "cpu")


def _reset_grads(grad_to_none) -> None:
    if grad_to_none is not None:
        for t in grad_to_none:
            t.grad = None


def spin_cycles_per_ms() -> float:
    """GPU clock cycles of ``torch.cuda._sleep`` per millisecond on the current device,
    measured once (a ``SPIN_CALIBRATION_CYCLES`` spin timed by CUDA events) and cached per
    device."""
    index = torch.cuda.current_device()
    rate = _SPIN_RATE.get(index)
    if rate is None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # load the spin kernel outside the measurement
        start.record()
        torch.cuda._sleep(SPIN_CALIBRATION_CYCLES)
        end.record()
        end.synchronize()
        rate = _SPIN_RATE[index] = SPIN_CALIBRATION_CYCLES / max(start.elapsed_time(end), 1e-3)
    return rate


def host_hiding_spin(host_ms: Sequence[float]) -> int:
    """Spin cycles that outlast a call whose host work took ``host_ms`` (a few samples, ms):
    twice the slowest plus 50 us, so its launches are all queued before the spin ends."""
    return int((2.0 * max(host_ms) + 0.05) * spin_cycles_per_ms())


def _bench_cuda(fn, warmup_ms, rep_ms, flush_l2, min_reps, max_reps, grad_to_none,
                hide_host=False) -> list[float]:
    sync = torch.cuda.synchronize
    _reset_grads(grad_to_none)
    fn()
    sync()
    cache = (
        torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None
    )

    def flush():
        if cache is not None:
            cache.zero_()

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host_ms = []
    start.record()
    for _ in range(ESTIMATE_CALLS):
        _reset_grads(grad_to_none)
        flush()
        t = time.perf_counter()
        fn()
        host_ms.append((time.perf_counter() - t) * 1e3)
    end.record()
    sync()
    # The estimate includes the flush, as in do_bench: the counts below stay conservative.
    estimate = max(start.elapsed_time(end) / ESTIMATE_CALLS, 1e-6)
    n_warmup = max(1, int(warmup_ms / estimate))
    n_repeat = min(max_reps, max(min_reps, int(rep_ms / estimate)))
    for _ in range(n_warmup):
        _reset_grads(grad_to_none)
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
    spin = host_hiding_spin(host_ms) if hide_host else 0
    for i in range(n_repeat):
        _reset_grads(grad_to_none)
        flush()
        if spin:
            torch.cuda._sleep(spin)
        starts[i].record()
        fn()
        ends[i].record()
    sync()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _bench_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps, grad_to_none) -> list[float]:
    clock = time.perf_counter
    _reset_grads(grad_to_none)
    fn()
    # Estimate from up to ESTIMATE_CALLS calls, stopping early once the warm-up budget is spent
    # (a Triton kernel under the interpreter may take seconds per call); these calls warm up too.
    t0 = clock()
    calls = 0
    while calls < ESTIMATE_CALLS:
        _reset_grads(grad_to_none)
        fn()
        calls += 1
        if (clock() - t0) * 1e3 >= warmup_ms:
            break
    estimate = max((clock() - t0) * 1e3 / calls, 1e-6)
    n_warmup = max(0, int(warmup_ms / estimate) - calls)
    for _ in range(n_warmup):
        _reset_grads(grad_to_none)
        fn()
    n_repeat = min(max_reps, max(min_reps, int(rep_ms / estimate)))
    times = []
    for _ in range(n_repeat):
        _reset_grads(grad_to_none)
        t = clock()
        fn()
        times.append((clock() - t) * 1e3)
    return times


@dataclass(frozen=True)
class HostDeviceSplit:
    """Where one call's time goes (CUDA only), medians in ms over ``reps`` calls each:
    ``host_ms`` the wall time of the call itself, started on an idle GPU (the Python, checks and
    launch work before its last kernel is queued); ``device_ms`` the CUDA-event time of the
    call queued behind a spin kernel longer than ``host_ms``, so every launch is queued before
    the GPU reaches it: the kernels back to back, with no wait on the host. ``bench`` (an L2
    flush before each call, which hides launch work up to the flush's own time) reports about
    max(device, host - flush) with the L2 cold; this split says which side bounds a call."""

    host_ms: float
    device_ms: float
    reps: int


def _warmed_up(fn: Callable[[], object], grad_to_none) -> None:
    """One call of ``fn`` (gradients reset first), finished on the GPU: compilation and
    first-call work out of the way before a measurement."""
    _reset_grads(grad_to_none)
    fn()
    torch.cuda.synchronize()


def host_device_split(fn: Callable[[], object], reps: int = 30,
                      grad_to_none: Sequence[torch.Tensor] | None = None) -> HostDeviceSplit:
    """Measure ``fn``'s HostDeviceSplit on the current CUDA device (``fn`` warmed up first)."""
    if reps < 1:
        raise ValueError(f"reps={reps} must be >= 1")
    sync = torch.cuda.synchronize
    _warmed_up(fn, grad_to_none)
    host = []
    for _ in range(reps):
        _reset_grads(grad_to_none)
        sync()
        t = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t) * 1e3)
    sync()
    host_ms = _quantile(sorted(host), 0.5)
    # spin 4x the slowest host call (at least 1 ms), so the whole call is queued before the
    # spin ends
    cycles = int(max(1.0, 4 * max(host)) * spin_cycles_per_ms())
    device = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        _reset_grads(grad_to_none)
        torch.cuda._sleep(cycles)
        start.record()
        fn()
        end.record()
        end.synchronize()
        device.append(start.elapsed_time(end))
    return HostDeviceSplit(host_ms, _quantile(sorted(device), 0.5), reps)


def kernel_times(fn: Callable[[], object], reps: int = 10,
                 grad_to_none: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
    """Device time per call of each CUDA kernel ``fn`` launches, in microseconds: the sum of
    that kernel's durations over ``reps`` calls (torch.profiler's CUDA activity, ``fn`` warmed
    up first, no L2 flush) divided by ``reps``, largest first. Says which of a call's kernels
    (forward, delta, dQ, dK/dV, a peer's permutation gathers) take its time."""
    if reps < 1:
        raise ValueError(f"reps={reps} must be >= 1")
    from torch.profiler import ProfilerActivity, profile

    _warmed_up(fn, grad_to_none)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            _reset_grads(grad_to_none)
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            totals[ev.name] = totals.get(ev.name, 0.0) + ev.device_time
    per_call = {name: us / reps for name, us in totals.items()}
    return dict(sorted(per_call.items(), key=lambda kv: -kv[1]))


def timed_call(fn: Callable[[], object], device=None) -> tuple[object, float]:
    """(fn's result, wall time of the call in ms, device synchronised before and after)."""
    cuda = _use_cuda(device)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t) * 1e3


def time_prepare(fn: Callable[[], object], device=None) -> float:
    """Wall time (ms) of ``fn``'s first call: compilation, planning and one run; report it as
    ``prepare_ms``, apart from the kernel time ``bench`` measures afterwards."""
    return timed_call(fn, device)[1]


def peak_memory(fn: Callable[[], object], device=None) -> int | None:
    """Bytes allocated at the peak of one ``fn()`` call beyond what was allocated before it
    (outputs, workspace, anything cached by the call), on CUDA; None on the CPU (torch's CPU
    allocator keeps no peak statistics)."""
    if not _use_cuda(device):
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda")
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev) - before)


def _mode_factor(mode: str) -> float:
    if mode == "fwd":
        return 1.0
    if mode == "fwd+bwd":
        return FWD_BWD_FACTOR
    raise ValueError(f"mode={mode!r} is not supported: use one of {MODES}")


def attention_flops(layout, batch: int, head_dim: int, mode: str = "fwd") -> float:
    """FLOPs of attention over ``layout`` (allowed pairs summed over heads), the numerator every
    backend shares: 4 * B * D * allowed_pairs, times 3.5 for 'fwd+bwd'."""
    return FLOPS_PER_PAIR_PER_DIM * batch * head_dim * layout.allowed_pairs * _mode_factor(mode)


def block_flops(layout, batch: int, head_dim: int, mode: str = "fwd") -> float:
    """FLOPs a block-sparse kernel actually performs: every stored block computed whole,
    4 * B * D * nnz * block^2 (times 3.5 for 'fwd+bwd')."""
    pairs = layout.nnz * layout.block**2
    return FLOPS_PER_PAIR_PER_DIM * batch * head_dim * pairs * _mode_factor(mode)


def tflops(flops: float, ms: float | None) -> float | None:
    """TFLOP/s for ``flops`` done in ``ms`` milliseconds (None when there is no time)."""
    if ms is None or not ms > 0:
        return None
    return flops / (ms * 1e-3) / 1e12
