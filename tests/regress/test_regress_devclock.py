"""The device clock pytest-benchmark reads: it advances by the wrapped calls' time only."""

import time

import pytest
import torch

from stbench.regress.devclock import DeviceClock

SLEEP_S = 0.01


def test_the_clock_counts_wrapped_calls_only():
    clock = DeviceClock("cpu")
    run = clock.timed(lambda: time.sleep(SLEEP_S) or 7)
    assert clock.seconds() == 0.0
    assert run() == 7
    first = clock.seconds()
    assert first >= SLEEP_S
    time.sleep(SLEEP_S)  # outside a wrapped call: not counted
    assert clock.seconds() == first
    run()
    assert clock.seconds() >= 2 * SLEEP_S


@pytest.mark.gpu
def test_on_the_gpu_a_round_is_device_time_without_the_host_work():
    """Each wrapped call sleeps 2 ms on the host before one short kernel: the clock advances
    by the kernel only (hide_host), or by the sleep too (hide_host=False)."""
    a = torch.randn(256, 256, device="cuda")

    def host_bound():
        time.sleep(0.002)
        return a + 1

    hidden, plain = DeviceClock("cuda"), DeviceClock("cuda")
    run_hidden, run_plain = hidden.timed(host_bound), plain.timed(host_bound, hide_host=False)
    for _ in range(5):
        run_hidden()
        run_plain()
    assert hidden.seconds() < 5 * 0.5e-3 and plain.seconds() > 5 * 1.5e-3
