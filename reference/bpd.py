"""Bits per dim, full-split evaluation, and backend parity of the Sparse Transformer.

Bits per dim of a batch: the weighted mean over targets of ``-log2 p(target | inputs)``, with the
weights of ``data.Batch`` (1 for every counted byte / real sub-pixel, 0 elsewhere):

    bpd = sum_t w_t * CE_t / (ln 2 * sum_t w_t),   CE_t = -log softmax(logits_t)[target_t]

Per byte for text, per sub-pixel for images. ``evaluate`` sums it over a whole split (every
target exactly once, see data.TextSequences.eval_batches) in float64; with ``ranks`` (torchrun)
rank r evaluates batches r, r + K, r + 2K, ... of the K ranks and the sums are all-reduced, so
every rank gets the whole split's value.

Parity: the same weights and the same batch, run with each backend; the bits per dim and the
gradient of every parameter are compared with the dense reference's. Accepted when
|bpd - bpd_dense| <= PARITY_BPD_TOL[dtype] and cos(grad, grad_dense) >= PARITY_GRAD_COS.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)  # nats -> bits
# Tolerances of issue 5: bpd within 1e-4 in fp32 and 5e-3 in bf16 of the dense reference.
PARITY_BPD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-3}
PARITY_GRAD_COS = 0.999
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype={name!r}: choose one of {', '.join(DTYPES)}") from None


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on ``device`` for dtype bf16; nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def weighted_nll(logits: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w_t * CE_t in nats, sum of w_t): logits [B, N, V] (any dtype, reduced in fp32)."""
    ce = F.cross_entropy(
        logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none"
    )  # (B*N,)
    w = batch.weights.flatten().to(ce.dtype)
    return (ce * w).sum(), w.sum()


def batch_bpd(model, batch, backend: str | None = None, dtype=torch.float32) -> torch.Tensor:
    """Bits per dim of one batch as a differentiable scalar (fp32)."""
    device = batch.inputs.device
    with autocast(device, dtype):
        logits = model(batch.inputs, backend=backend)  # (B, N, V)
    nll, count = weighted_nll(logits, batch)
    return nll / (count.clamp_min(1.0) * LN2)


@dataclass(frozen=True)
class EvalResult:
    bpd: float  # bits per dim over the split
    nats: float  # total negative log-likelihood in nats
    targets: int  # bytes / sub-pixels counted
    batches: int


@torch.no_grad()
def evaluate(model, sequences, batch_size: int, device="cpu", backend: str | None = None,
             dtype=torch.float32, max_batches: int | None = None, on_batch=None,
             ranks=None) -> EvalResult:
    """Bits per dim over ``sequences`` (data.TextSequences / ImageSequences), every target once
    (``max_batches`` truncates, for quick looks only). ``on_batch(i, n)`` reports progress.
    ``ranks``: a ``stbench.distributed.Ranks`` to shard the batches over (module doc)."""
    was_training = model.training
    model.eval()
    nll, count, n = 0.0, 0.0, 0
    try:
        for i, batch in enumerate(sequences.eval_batches(batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            if ranks is not None and i % ranks.world_size != ranks.rank:
                continue
            batch = batch.to(device)
            with autocast(device, dtype):
                logits = model(batch.inputs, backend=backend)
            s, c = weighted_nll(logits, batch)
            nll, count, n = nll + float(s.double()), count + float(c.double()), n + 1
            if on_batch is not None:
                on_batch(i + 1, n)
    finally:
        model.train(was_training)
    if ranks is not None:
        from stbench.distributed import all_reduce_sum

        nll, count, n = all_reduce_sum([nll, count, n], ranks)
    return EvalResult(nll / (max(count, 1.0) * LN2), nll, int(count), int(n))


@dataclass(frozen=True)
class ParityRow:
    backend: str
    dtype: str
    bpd: float | None
    bpd_diff: float | None  # |bpd - bpd of dense|
    grad_cos: float | None  # cosine of all parameter gradients against dense's
    ok: bool | None  # None for the reference row or a backend that could not run
    error: str | None = None


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
        for p in model.parameters()
    ])


def parity(model, batch, backends, dtype=torch.float32,
           reference: str = "dense") -> list[ParityRow]:
    """Bits per dim and gradients of ``model`` on ``batch`` with each backend, against
    ``reference``. Dropout is off (eval mode) so every backend sees the same function. A backend
    that cannot run gives a row with ``error`` set and ``ok`` None."""
    from stbench.errors import BackendUnavailable

    was_training = model.training
    model.eval()
    results = {}
    names = [reference] + [b for b in backends if b != reference]
    try:
        for name in names:
            model.zero_grad(set_to_none=True)
            try:
                with torch.enable_grad():
                    bpd = batch_bpd(model, batch, backend=name, dtype=dtype)
                    bpd.backward()
                results[name] = (float(bpd.detach()), _flat_grad(model), None)
            except BackendUnavailable as exc:
                if name == reference:
                    raise
                results[name] = (None, None, str(exc))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    ref_bpd, ref_grad, _ = results[reference]
    tol = PARITY_BPD_TOL.get(dtype, PARITY_BPD_TOL[torch.bfloat16])
    dname = next((k for k, v in DTYPES.items() if v == dtype), str(dtype))
    rows = []
    for name in names:
        bpd, grad, err = results[name]
        if bpd is None:
            rows.append(ParityRow(name, dname, None, None, None, None, err))
            continue
        diff = abs(bpd - ref_bpd)
        cos = float(F.cosine_similarity(grad, ref_grad, dim=0))
        ok = None if name == reference else (diff <= tol and cos >= PARITY_GRAD_COS)
        rows.append(ParityRow(name, dname, bpd, diff, cos, ok))
    return rows
