"""The timer on the CPU: sane quantiles, prepare time apart, FLOP counts."""

import time

import pytest
import torch

from stbench import layouts, timing


def test_bench_cpu_quantiles_are_ordered_and_near_the_sleep():
    t = timing.bench(lambda: time.sleep(0.002), warmup_ms=5, rep_ms=30, device="cpu")
    assert t.device == "cpu"
    assert t.reps >= 3
    assert t.p20_ms <= t.median_ms <= t.p80_ms
    assert 1.9 <= t.median_ms < 20


def test_bench_respects_min_reps_for_slow_functions():
    calls = []
    t = timing.bench(lambda: calls.append(time.sleep(0.01)), warmup_ms=1, rep_ms=1, min_reps=4,
                     device="cpu")
    assert t.reps == 4
    # 1 untimed call + 1 estimate call (warm-up budget spent) + 4 timed ones
    assert len(calls) == 6


def test_bench_resets_grads():
    x = torch.ones(3, requires_grad=True)

    def step():
        (x * 2).sum().backward()
        assert torch.equal(x.grad, torch.full((3,), 2.0))  # never accumulated

    timing.bench(step, warmup_ms=1, rep_ms=2, grad_to_none=[x], device="cpu")


@pytest.mark.parametrize("bad", [(0.2, 0.8), (0.6, 0.5, 0.8), (0.2, 0.4, 0.8)])
def test_bad_quantiles_are_named(bad):
    with pytest.raises(ValueError, match="quantiles"):
        timing.bench(lambda: None, quantiles=bad, device="cpu")


def test_summarize_matches_torch_quantile():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    t = timing.summarize(xs)
    q = torch.quantile(torch.tensor(xs, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.8],
                       dtype=torch.float64))
    assert (t.p20_ms, t.median_ms, t.p80_ms) == pytest.approx(q.tolist())


def test_time_prepare_and_peak_memory_on_cpu():
    assert timing.time_prepare(lambda: time.sleep(0.005), device="cpu") >= 4.5
    out, ms = timing.timed_call(lambda: time.sleep(0.005) or 7, device="cpu")
    assert out == 7 and 4.5 <= ms < 1000  # the call's wall time, in milliseconds
    assert timing.peak_memory(lambda: None, device="cpu") is None


def _dense_causal_layout(n, block):
    nb = n // block
    qb, kb = torch.tril_indices(nb, nb)
    kinds = torch.where(qb == kb, layouts.DIAG, layouts.FULL)
    return layouts.Layout.from_parts(n, 2, block, "causal", torch.zeros_like(qb), qb, kb, kinds)


def test_flops_of_a_causal_layout():
    lay = _dense_causal_layout(128, 32)  # one head of two carries blocks
    pairs = 128 * 129 // 2
    assert timing.attention_flops(lay, 3, 64, "fwd") == 4 * 3 * 64 * pairs
    assert timing.attention_flops(lay, 3, 64, "fwd+bwd") == 3.5 * 4 * 3 * 64 * pairs
    assert timing.block_flops(lay, 3, 64, "fwd") == 4 * 3 * 64 * lay.nnz * 32 * 32
    assert timing.tflops(2e12, 1000.0) == pytest.approx(2.0)
    assert timing.tflops(1.0, None) is None
    with pytest.raises(ValueError, match="mode"):
        timing.attention_flops(lay, 1, 64, "bwd")


@pytest.mark.gpu
@pytest.mark.smoke
def test_bench_cuda_events_and_peak_memory():
    a = torch.randn(2048, 2048, device="cuda")
    t = timing.bench(lambda: a @ a, warmup_ms=5, rep_ms=20)
    assert t.device == "cuda" and t.reps >= 3 and 0 < t.p20_ms <= t.median_ms <= t.p80_ms
    # 2 * 2048^3 flops: an H200 does this in well under 1 ms, far over 1 us
    assert 1e-3 < t.median_ms < 50
    peak = timing.peak_memory(lambda: torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda"))
    assert peak >= 64 * 2**20
    assert timing.time_prepare(lambda: a @ a) > 0


def test_host_hiding_spin_outlasts_twice_the_slowest_host_call(monkeypatch):
    monkeypatch.setattr(timing, "spin_cycles_per_ms", lambda: 2e6)  # a 2 GHz spin
    assert timing.host_hiding_spin([0.1, 0.3, 0.2]) == int((2 * 0.3 + 0.05) * 2e6)
    assert timing.host_hiding_spin([0.0]) == int(0.05 * 2e6)  # never shorter than 50 us


@pytest.mark.gpu
@pytest.mark.smoke
def test_bench_hide_host_leaves_host_work_out_of_the_interval():
    """A call that sleeps 2 ms on the host before one short kernel: the plain timer counts the
    sleep (the GPU idles inside the interval), hide_host only the kernel."""
    import time as _time

    a = torch.randn(256, 256, device="cuda")

    def host_bound():
        _time.sleep(0.002)
        return a + 1

    plain = timing.bench(host_bound, warmup_ms=5, rep_ms=20, flush_l2=False)
    hidden = timing.bench(host_bound, warmup_ms=5, rep_ms=20, flush_l2=False, hide_host=True)
    assert plain.median_ms > 1.5 and hidden.median_ms < 0.5
    assert timing.spin_cycles_per_ms() > 1e5  # a GPU clock of over 100 MHz


@pytest.mark.gpu
def test_host_device_split_separates_host_work_from_kernels():
    """A call that spends 3 ms on the host before one short kernel: host_ms sees the 3 ms,
    device_ms only the kernel (its launch was queued behind the spin); a call that is one long
    kernel has device_ms >> host_ms."""
    import time as _time

    a = torch.randn(256, 256, device="cuda")

    def host_bound():
        _time.sleep(0.003)
        return a + 1

    split = timing.host_device_split(host_bound, reps=5)
    assert split.reps == 5 and split.host_ms >= 3.0
    assert split.device_ms < 1.0
    b = torch.randn(8192, 8192, device="cuda")
    split = timing.host_device_split(lambda: b @ b, reps=5)  # 1.1 TFLOP in fp32: milliseconds
    assert split.device_ms > 0.5 and split.device_ms > 5 * split.host_ms
    with pytest.raises(ValueError, match="reps"):
        timing.host_device_split(host_bound, reps=0)


@pytest.mark.gpu
def test_kernel_times_names_each_kernel_with_its_share():
    """A large matrix product and a tiny add per call: two kernels, the product's far longer
    and listed first, their total within the call's event time."""
    big = torch.randn(4096, 4096, device="cuda")
    small = torch.randn(64, 64, device="cuda")

    def call():
        return big @ big, small + 1

    times = timing.kernel_times(call, reps=4)
    assert len(times) >= 2 and all(us > 0 for us in times.values())
    durations = list(times.values())
    assert durations[0] > 10 * durations[-1]
    split = timing.host_device_split(call, reps=4)
    assert sum(times.values()) <= split.device_ms * 1e3 * 1.5
    with pytest.raises(ValueError, match="reps"):
        timing.kernel_times(call, reps=0)
