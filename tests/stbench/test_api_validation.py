"""``stbench.attention``'s validation: every bad input raises an error naming the parameter
and the fix; unknown or unavailable backends say why."""

import math

import pytest
import torch

import stbench
from stbench import layouts
from stbench.backends import BackendUnavailable, UnknownBackend
from stbench.layouts import LayoutError

L = layouts.causal(64, block=16, heads=2)


def qkv(shape=(1, 2, 64, 8), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g).to(dtype) for _ in range(3)]


def run(q, k, v, layout=L, **kw):
    return stbench.attention(q, k, v, layout, backend=kw.pop("backend", "dense"), **kw)


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must have 4 dimensions \[B, H, N, D\]"),
        (lambda q, k, v: (q, k, v[..., None]), ValueError, "v must have 4 dimensions"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
        (lambda q, k, v: (q, k.to(torch.int32), v), TypeError, r"k.dtype=torch.int32"),
        (lambda q, k, v: (q, k, v.double()), TypeError, "q, k, v must share one dtype"),
        (lambda q, k, v: (q, k.to("meta"), v), ValueError, "q, k, v must be on one device"),
        (lambda q, k, v: (q, k, v[..., :4]), ValueError, r"k \(1, 2, 64, 8\) and v"),
        (lambda q, k, v: (q[..., :4], k, v), ValueError, r"q \(1, 2, 64, 4\) and k"),
        (lambda q, k, v: (q[:0], k[:0], v[:0]), ValueError, "empty dimension"),
    ],
)
def test_tensor_errors_name_the_parameter(change, error, pattern):
    with pytest.raises(error, match=pattern):
        run(*change(*qkv()))


def test_n_and_heads_must_match_the_layout():
    q, k, v = qkv((1, 2, 32, 8))
    with pytest.raises(ValueError, match=r"N=32 tokens but layout.n_ctx=64.*n_ctx=32"):
        run(q, k, v)
    q, k, v = qkv((1, 3, 64, 8))
    with pytest.raises(ValueError, match=r"H=3 heads but layout.heads=2.*heads=3"):
        run(q, k, v)


def test_layout_must_be_a_layout():
    with pytest.raises(TypeError, match="layout must be a stbench.layouts.Layout"):
        run(*qkv(), layout=torch.ones(64, 64, dtype=torch.bool))


@pytest.mark.parametrize("scale, error", [
    (-1.0, ValueError), (0.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (torch.tensor(0.5), TypeError), ("0.5", TypeError), (True, TypeError),
])
def test_bad_scale(scale, error):
    with pytest.raises(error, match="scale"):
        run(*qkv(), scale=scale)


def test_scale_default_and_explicit():
    q, k, v = qkv()
    assert stbench.validate_inputs(q, k, v, L, None) == pytest.approx(8**-0.5)
    assert stbench.validate_inputs(q, k, v, L, 2) == 2.0
    out_default = run(q, k, v)
    torch.testing.assert_close(out_default, run(q, k, v, scale=8**-0.5), atol=0, rtol=0)


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(UnknownBackend, match="choose one of dense, triton, cupy, flex, flex_flash, fa4, sdpa, gluon, flex_predicate"):
        run(*qkv(), backend="flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")
def test_unavailable_backends_say_why():
    with pytest.raises(BackendUnavailable, match="CUDA"):
        run(*qkv(), backend="flex")
    with pytest.raises(BackendUnavailable, match="neither full nor plain causal"):
        run(*qkv(), layout=layouts.local(64, block=16, window=20, heads=2), backend="sdpa")


def test_backend_dtype_refusal_names_the_dtype():
    reason = stbench.backends.unavailable_reason("triton", "cpu", torch.float64)
    assert reason is not None and "dtype" in reason


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(n_ctx=100, block=32), r"n_ctx=100 is not a multiple of block=32"),
    (dict(n_ctx=96, block=48), r"block=48 is not supported.*power of two in 16..128"),
    (dict(n_ctx=512, block=256), r"block=256"),
    (dict(n_ctx=64, block=16, heads=0), r"heads"),
])
def test_layout_parameter_errors(kwargs, pattern):
    with pytest.raises(LayoutError, match=pattern):
        layouts.causal(**kwargs)


def test_strided_stride_must_divide():
    with pytest.raises(LayoutError, match="stride"):
        layouts.strided(256, block=16, stride=24)


def test_auto_runs_on_cpu():
    q, k, v = qkv((1, 2, 64, 32))
    out = stbench.attention(q, k, v, L)  # 'auto': the tuned pick, else the first that runs
    ref = stbench.attention(q, k, v, L, backend="dense")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
