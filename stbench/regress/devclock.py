"""A clock that reads CUDA-event time, for timers that want a ``now()`` (pytest-benchmark).

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before the call. With
``DeviceClock.seconds`` as that timer and the call wrapped by ``DeviceClock.timed``, a round's
duration is exactly the CUDA-event time of the kernels it launched: ``timed`` records an event
before and after the call, waits for the second, and advances the clock by the elapsed time;
``seconds`` returns the clock. Host work outside the call (setup, an L2 flush) never counts,
nor, with ``hide_host`` (the default), the call's own host work: the start event is queued
behind a spin kernel that outlasts it (``stbench.timing.host_hiding_spin``, sized from the host
time of the calls so far), so a round is the device time of its kernels back to back, as
``stbench regress`` times them. On the CPU the clock advances by ``time.perf_counter``
differences instead.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from stbench import timing

MS_PER_S = 1e3
HOST_SAMPLES = 8  # the spin outlasts the slowest of the last few calls' host work
FIRST_CALL_HOST_MS = 5.0  # assumed before any call was seen (a warm-up round)


class DeviceClock:
    def __init__(self, device="cuda"):
        self.device = torch.device(device)
        self._elapsed_s = 0.0

    def seconds(self) -> float:
        """Seconds of timed calls so far (a monotone clock for pytest-benchmark's timer)."""
        return self._elapsed_s

    def timed(self, fn: Callable[[], object], hide_host: bool = True) -> Callable[[], object]:
        """``fn`` wrapped: each call advances the clock by its device time."""
        if self.device.type != "cuda":
            def run_cpu():
                t = time.perf_counter()
                out = fn()
                self._elapsed_s += time.perf_counter() - t
                return out
            return run_cpu

        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        host_ms: list[float] = []

        def run():
            if hide_host:
                torch.cuda._sleep(timing.host_hiding_spin(host_ms[-HOST_SAMPLES:] or
                                                          [FIRST_CALL_HOST_MS]))
            start.record()
            t = time.perf_counter()
            out = fn()
            host_ms.append((time.perf_counter() - t) * 1e3)
            end.record()
            end.synchronize()
            self._elapsed_s += start.elapsed_time(end) / MS_PER_S
            return out
        return run
