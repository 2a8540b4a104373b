"""Bits-per-dim parity: the same weights and batch give the dense reference's bits per dim on
every backend (within 1e-4 in fp32, 5e-3 in bf16) and gradients with cosine >= 0.999.

Tiny preset (2 layers, N=128, block 16, D=32) so the Triton backend runs under its interpreter
on the CPU in a few seconds per case. A backend that cannot run here is skipped with its reason.
"""

import json
import os

import pytest
import torch

import stbench
from stbench.accuracy import rel_err
from stbench.backends import unavailable_reason
from stbench.reference import bpd, data, train
from stbench.reference.model import SparseTransformer, preset

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PATTERNS = {"strided": {}, "fixed": {"stride": 32}, "dense": {}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _kernel_error(backend, dtype) -> float:
    """Relative error of the backend's plain attention output against dense in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    lay = stbench.layouts.causal(64, block=16, heads=1)
    q, k, v = (torch.randn(1, 1, 64, 32, generator=g).to(DEVICE, dtype) for _ in range(3))
    return rel_err(stbench.attention(q, k, v, lay, backend=backend),
                   stbench.attention(q, k, v, lay, backend="dense"))


@pytest.fixture(scope="module")
def validation():
    return data.load("pydoc")["validation"]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("attention", sorted(PATTERNS))
@pytest.mark.parametrize("backend", ["dense", "triton"])
def test_bpd_and_gradients_match_dense(backend, attention, dtype, validation):
    dt = DTYPES[dtype]
    why = unavailable_reason(backend, DEVICE, dt)
    if why is not None:
        pytest.skip(f"backend {backend!r} unavailable here: {why}")
    cfg = preset("tiny", attention=attention, **PATTERNS[attention])
    torch.manual_seed(0)
    model = SparseTransformer(cfg).to(DEVICE)
    batch = train.sequences_for(cfg, validation).sample(2, torch.Generator().manual_seed(1))
    rows = {r.backend: r for r in bpd.parity(model, batch.to(DEVICE), [backend], dt)}
    ref, row = rows["dense"], rows[backend]
    assert 7.0 < ref.bpd < 9.0  # untrained: about 8 bits per byte
    if not row.ok:
        # Seen on the CPU: Triton 3.6's interpreter computes tl.dot on bf16 operands wrongly
        # (a 16x16 bf16 tl.dot is off by ~3e10), so the triton backend's bf16 attention is
        # itself wrong there. That is reported as an expected failure naming the kernel error;
        # a model-level mismatch with a correct kernel still fails.
        err = _kernel_error(backend, dt)
        if err > 0.1:
            pytest.xfail(f"{backend} {dtype} attention alone is wrong here (relative error "
                         f"{err:.1e} against dense): a kernel issue, not the model's")
    assert row.bpd_diff <= bpd.PARITY_BPD_TOL[dt], row
    assert row.grad_cos >= bpd.PARITY_GRAD_COS, row


def test_unavailable_backend_is_a_row_not_a_crash(validation):
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = SparseTransformer(cfg)
    batch = train.sequences_for(cfg, validation).sample(1, torch.Generator().manual_seed(1))
    rows = bpd.parity(model, batch, ["sdpa"])  # sdpa runs only full or plain causal layouts
    assert rows[1].backend == "sdpa" and rows[1].error and "causal" in rows[1].error
    assert rows[1].ok is None


def test_parity_cli_json_line(capsys):
    from stbench.cli import main

    code = main(["model", "parity", "--preset", "tiny", "--backends", "dense,sdpa",
                 "--set", "attention=dense", "--device", "cpu", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert code == 0 and set(result["bpd"]) == {"dense", "sdpa"}
    assert abs(result["bpd"]["dense"] - result["bpd"]["sdpa"]) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_text_8k_parity_on_gpu(dtype):
    """The GPU check of issue 5: the text-8k preset (N = 8192) on every backend that runs.
    Data: STBENCH_DATA_DIR (a `stbench data prepare` folder) or the installed wiki package,
    else the pydoc fixture (still real text, > 8193 bytes per split)."""
    dt = DTYPES[dtype]
    data_dir = os.environ.get("STBENCH_DATA_DIR")
    name = "wiki" if data_dir or data.available("wiki") is None else "pydoc"
    cfg = preset("text-8k")
    torch.manual_seed(0)
    model = SparseTransformer(cfg).to(DEVICE)
    split = data.load(name, data_dir)["validation"]
    batch = train.sequences_for(cfg, split).sample(1, torch.Generator().manual_seed(1))
    candidates = [b for b in ("triton", "cupy") if unavailable_reason(b, DEVICE, dt) is None]
    rows = bpd.parity(model, batch.to(DEVICE), candidates, dt)
    for row in rows:
        print(row)
    bad = [r for r in rows if r.ok is False]
    assert not bad, bad
