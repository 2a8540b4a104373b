"""Data-parallel training of the Sparse Transformer over torchrun's ranks.

One global batch per step, whatever the number of ranks: every rank draws the same
``batch_size`` sequences from the same seeded data generator, rank r keeps sequences
``[r b, (r + 1) b)`` with ``b = batch_size / world_size`` and runs them in micro-batches of
``micro_batch`` sequences (gradient accumulation; ``DistributedDataParallel.no_sync`` until the
last one). Each micro-batch's loss is normalised by the global batch's target count C:

    loss_m = world_size * sum_t w_t CE_t / (C ln 2)     (DDP averages gradients over the ranks)

so the accumulated, averaged gradient is exactly that of the global batch's bits per dim in one
process, up to the order of floating-point sums. That is why a checkpoint resumes on any number
of ranks (the data generator's state is global) and why the loss curve on K GPUs matches the
single-GPU curve at the same global batch. Ranks other than 0 reseed their dropout generator
with ``seed + rank`` after the model is made, so the ranks' slices do not share dropout masks.
"""

from __future__ import annotations

import contextlib

import torch

from .bpd import LN2, autocast, weighted_nll
from .data import Batch


def local_batch(batch_size: int, world_size: int, micro_batch: int | None) -> tuple[int, int]:
    """(sequences per rank, sequences per micro-batch); ValueError names the fix."""
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is not a multiple of the {world_size} "
                         "processes: the global batch is split evenly over them")
    per_rank = batch_size // world_size
    micro = micro_batch or per_rank
    if micro < 1 or per_rank % micro:
        raise ValueError(f"micro_batch={micro_batch} must divide the {per_rank} sequences per "
                         f"process (batch_size {batch_size} / {world_size} processes)")
    return per_rank, micro


def wrap(model: torch.nn.Module, ranks, seed: int) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (itself otherwise);
    DDP broadcasts rank 0's parameters, so every rank starts from the same weights."""
    if ranks.backend is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if ranks.rank:
        torch.manual_seed(seed + ranks.rank)
    device = torch.device(ranks.device)
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.inputs[start:stop], batch.targets[start:stop],
                 batch.weights[start:stop])


def train_step(net, batch: Batch, ranks, micro_batch: int | None, device,
               dtype=torch.float32) -> float:
    """Forward and backward of this rank's share of the global ``batch`` (CPU tensors, the
    whole global batch); returns the global batch's bits per dim. Gradients accumulate into
    the parameters' ``.grad`` (zero them before)."""
    from stbench.distributed import all_reduce_sum

    per_rank, micro = local_batch(batch.inputs.shape[0], ranks.world_size, micro_batch)
    count = float(batch.weights.double().sum().clamp_min(1.0))  # every rank sees the batch
    mine = _slice(batch, ranks.rank * per_rank, (ranks.rank + 1) * per_rank)
    nll_sum = 0.0
    for start in range(0, per_rank, micro):
        part = _slice(mine, start, start + micro).to(device)
        last = start + micro == per_rank
        sync = contextlib.nullcontext() if last or ranks.backend is None else net.no_sync()
        with sync:
            with autocast(device, dtype):
                logits = net(part.inputs)  # (micro, N, V)
            nll, _ = weighted_nll(logits, part)
            (nll * (ranks.world_size / (count * LN2))).backward()
        nll_sum += float(nll.detach().double())
    return all_reduce_sum([nll_sum], ranks)[0] / (count * LN2)


def any_rank(flag: bool, ranks) -> bool:
    """True on every rank when ``flag`` is true on any (ranks stop together)."""
    if ranks.backend is None:
        return bool(flag)
    from stbench.distributed import all_reduce_sum

    return all_reduce_sum([1.0 if flag else 0.0], ranks)[0] > 0
