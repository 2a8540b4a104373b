"""Fixtures of the regression-gate tests: one torch thread (tiny problems on a shared CPU run
tens of times faster without thread contention) and the virtual clock."""

import pytest
import torch
from regress_stubs import VirtualClock

from stbench import timing
from stbench.regress import calibrate

REFERENCE_COSTS_MS = {"matmul": 0.2, "copy": 0.1}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clock(monkeypatch):
    """A VirtualClock installed as ``stbench.timing.bench`` for the test."""
    c = VirtualClock()
    monkeypatch.setattr(timing, "bench", c.bench)
    return c


@pytest.fixture
def references(monkeypatch, clock):
    """Reference kernels that spend virtual time (so that drift is the clock's slowness)."""

    def refs(device, sizes, seed=0):
        return [calibrate.Reference(name, lambda ms=ms: clock.spend(ms))
                for name, ms in REFERENCE_COSTS_MS.items()], []

    monkeypatch.setattr(calibrate, "references", refs)
    return clock
