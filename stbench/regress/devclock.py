"""A clock that reads CUDA-event time, for timers that want a ``now()`` (pytest-benchmark).

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before the call. With
``DeviceClock.seconds`` as that timer and the call wrapped by ``DeviceClock.timed``, a round's
duration is exactly the CUDA-event time of the kernels it launched: ``timed`` records an event
before and after the call, waits for the second, and advances the clock by the elapsed time;
``seconds`` returns the clock. Host work outside the call (setup, an L2 flush) never counts.
On the CPU the clock advances by ``time.perf_counter`` differences instead.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

MS_PER_S = 1e3


class DeviceClock:
    def __init__(self, device="cuda"):
        self.device = torch.device(device)
        self._elapsed_s = 0.0

    def seconds(self) -> float:
        """Seconds of timed calls so far (a monotone clock for pytest-benchmark's timer)."""
        return self._elapsed_s

    def timed(self, fn: Callable[[], object]) -> Callable[[], object]:
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

        def run():
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            self._elapsed_s += start.elapsed_time(end) / MS_PER_S
            return out
        return run
