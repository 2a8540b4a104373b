"""The device clock pytest-benchmark reads: it advances by the wrapped calls' time only."""

import time

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
