"""Training, evaluation and sampling loops for the Sparse Transformer, with checkpoints and logs.

``train`` runs AdamW with linear warm-up and cosine decay on random windows / images of the train
split, evaluates bits per dim on the validation split every ``eval_every`` steps, appends one JSON
object per event to ``<out>/log.jsonl`` (loss, bpd, learning rate, tokens per second, peak device
memory) and saves ``<out>/checkpoint.pt``; ``resume=True`` continues from that checkpoint (model,
optimiser, data and dropout generators, step), appending to the same log after dropping the
records past the checkpoint's step (a run killed after its last checkpoint wrote them; they are
written again), so every step is logged once. With no checkpoint to resume from it says so on
stderr and starts from step 0.

Under torchrun (``ranks``: ``stbench.distributed.init``) it trains data-parallel
(``reference/parallel.py``: DistributedDataParallel, gradient accumulation in ``micro_batch``
sequences, the same global batch for any number of ranks), evaluates the validation split
sharded over the ranks, and rank 0 alone writes the log and the checkpoints; a checkpoint
resumes on any number of ranks (the output folder must be one all ranks can read).

Checkpoints are data, never code: a dict of tensors, numbers, strings and lists, written with
``torch.save`` and read with ``torch.load(..., weights_only=True)``, then validated (format,
version, keys, model config) with errors that say what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from . import parallel
from .bpd import evaluate, parse_dtype
from .model import ModelConfig, SparseTransformer

CHECKPOINT_FORMAT = "stbench-sparse-transformer"
CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("format", "version", "model_config", "train_config", "step", "model",
                   "optimizer", "data_rng", "torch_rng")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. ``dtype``: 'fp32' or 'bf16' (autocast); ``eval_batches``:
    None evaluates the whole validation split."""

    steps: int = 100
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batch_size: int = 8
    eval_batches: int | None = None
    log_every: int = 10
    seed: int = 0
    dtype: str = "fp32"
    backend: str = "dense"
    dataset: str | None = None  # bookkeeping: what it was trained on (eval / sample default)

    def __post_init__(self):
        parse_dtype(self.dtype)
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive int")

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train config has unknown keys {unknown}; known: {sorted(known)}")
        return TrainConfig(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def sequences_for(cfg: ModelConfig, split: np.ndarray):
    """The model's view of one split: TextSequences for text models, ImageSequences (on the
    model's image grid) for image models."""
    if cfg.image_shape is None:
        if split.ndim != 1:
            raise ValueError(f"a text model needs a 1-D byte split, got shape {split.shape}")
        return data_mod.TextSequences(split, cfg.n_ctx)
    rows, cols, chans = cfg.image_shape
    if split.ndim != 4 or split.shape[3] != chans:
        raise ValueError(f"an image model with {chans} channel(s) needs uint8 [n, R, C, {chans}],"
                         f" got shape {split.shape}")
    return data_mod.ImageSequences(split, (rows, cols))


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): peak allocated CUDA memory since the last reset, or off CUDA the process's
    peak resident set size (Linux ru_maxrss is in KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


def make_optimizer(model, cfg: TrainConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, train_cfg: TrainConfig, step: int, data_rng) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": json.dumps(model.cfg.to_dict()),
        "train_config": json.dumps(asdict(train_cfg)),
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "data_rng": data_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint


def load_checkpoint(path) -> dict:
    """Read and validate a checkpoint; returns it with 'model_config' / 'train_config' parsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: train one with `stbench model train`"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise ValueError(f"{path} is not a loadable stbench checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, this code reads "
                         f"{CHECKPOINT_VERSION}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks keys {missing}")
    try:
        state["model_config"] = ModelConfig.from_dict(json.loads(state["model_config"]))
        state["train_config"] = TrainConfig.from_dict(json.loads(state["train_config"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad config in checkpoint ({exc})") from None
    return state


def model_from_checkpoint(path, backend: str = "dense",
                          device="cpu") -> tuple[SparseTransformer, dict]:
    """The model saved in checkpoint ``path`` (on ``device``) and the validated checkpoint."""
    state = load_checkpoint(path)
    model = SparseTransformer(state["model_config"], backend=backend)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the model config ({exc})") from None
    return model.to(device), state


# ---------------------------------------------------------------------------- training
class JsonlLog:
    """Append-only JSONL log; each record gets a wall-clock ``time`` (Unix seconds). A log of a
    rank other than 0 (``enabled=False``) writes nothing."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop the records past ``step`` and a last line cut off mid-write (rewritten
        atomically); other lines are kept as they are."""
        if not self.enabled or not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]  # cut off by a killed writer
        kept = [line for line in lines if line.strip() and _step(line) <= step]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def _step(line: str) -> int:
    """A log record's step (0 for a line that is not a record with one)."""
    try:
        step = json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return 0
    return step if isinstance(step, int) else 0


def train(model_cfg: ModelConfig, cfg: TrainConfig, splits: dict, out_dir, device="cpu",
          resume: bool = False, progress=None, stop_after: int | None = None,
          time_limit_s: float | None = None, ranks=None, micro_batch: int | None = None) -> dict:
    """Train on ``splits['train']``, evaluate on ``splits['validation']``; returns the last
    validation record. ``progress``: an optional rich Progress (one task is added).
    ``stop_after``: leave after that many steps, saving a checkpoint (a time budget, or an
    interruption in tests); the schedule still runs to ``cfg.steps`` when resumed.
    ``time_limit_s``: likewise leave once this many seconds of this call have passed (the
    ranks leave together). ``ranks``: this process's ``stbench.distributed.Ranks`` (None: one
    process); ``micro_batch``: sequences per forward pass on a rank (None: all of its share)."""
    from stbench.distributed import Ranks, barrier

    ranks = ranks or Ranks(device=str(device))
    parallel.local_batch(cfg.batch_size, ranks.world_size, micro_batch)  # refuse a bad split
    t_start = time.perf_counter()
    device = torch.device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: name a new or existing folder")
    out.mkdir(parents=True, exist_ok=True)
    ckpt, log = out / "checkpoint.pt", JsonlLog(out / "log.jsonl", enabled=ranks.is_main)
    dtype = parse_dtype(cfg.dtype)
    data_rng = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if resume and ckpt.is_file():
        model, state = model_from_checkpoint(ckpt, backend=cfg.backend, device=device)
        if model.cfg != model_cfg:
            raise ValueError(
                f"{ckpt} holds a different model config: {model.cfg}; use another --out"
            )
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(state["optimizer"])
        data_rng.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    else:
        if resume and ranks.is_main:
            print(f"stbench model train --resume: no checkpoint at {ckpt}; starting from step 0",
                  file=sys.stderr)
        torch.manual_seed(cfg.seed)
        model = SparseTransformer(model_cfg, backend=cfg.backend).to(device)
        optimizer = make_optimizer(model, cfg)
    net = parallel.wrap(model, ranks, cfg.seed)
    if resume:
        log.keep_until(start)
    log.write(event="start", step=start, model_config=model_cfg.to_dict(), train_config=asdict(cfg),
              device=str(device), params=model.num_params(), torch=torch.__version__,
              world_size=ranks.world_size, micro_batch=micro_batch)
    train_seq = sequences_for(model_cfg, splits["train"])
    val_seq = sequences_for(model_cfg, splits["validation"])
    task = progress.add_task("train", total=cfg.steps, completed=start) if progress else None
    last_eval = {}
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_last, tokens = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = train_seq.sample(cfg.batch_size, data_rng)  # the global batch, on the CPU
        optimizer.zero_grad(set_to_none=True)
        loss = parallel.train_step(net, batch, ranks, micro_batch, device, dtype)  # its bpd
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        tokens += batch.inputs.numel()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            mem, mem_kind = peak_memory(device)
            log.write(event="train", step=done, loss_bpd=loss, lr=lr_at(step, cfg),
                      grad_norm=float(gnorm), tokens_per_s=tokens / (now - t_last),
                      s_per_iter=(now - t_last) / (tokens / batch.inputs.numel()),
                      peak_mem_bytes=mem, peak_mem_kind=mem_kind)
            t_last, tokens = now, 0
        stopping = (stop_after is not None and done >= stop_after) or parallel.any_rank(
            time_limit_s is not None and time.perf_counter() - t_start > time_limit_s, ranks)
        if stopping and not (done % cfg.eval_every == 0 or done == cfg.steps) and ranks.is_main:
            save_checkpoint(ckpt, model, optimizer, cfg, done, data_rng)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            res = evaluate(model, val_seq, cfg.eval_batch_size, device, dtype=dtype,
                           max_batches=cfg.eval_batches, ranks=ranks)
            last_eval = {"event": "eval", "step": done, "split": "validation", "bpd": res.bpd,
                         "targets": res.targets, "full": cfg.eval_batches is None}
            log.write(**last_eval)
            if ranks.is_main:
                save_checkpoint(ckpt, model, optimizer, cfg, done, data_rng)
            t_last = time.perf_counter()  # evaluation time is not training throughput
        if task is not None:
            progress.update(task, completed=done,
                            description=f"train bpd {loss:.3f}" +
                            (f" val {last_eval['bpd']:.3f}" if last_eval else ""))
        if stopping:
            break
    barrier(ranks)  # rank 0's last checkpoint is on disk before any rank reads it
    return last_eval


# ---------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(model, prime: torch.Tensor, length: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, forced=None,
           max_token: int | None = None) -> torch.Tensor:
    """Extend input sequences ``prime`` int64 [B, P] (P >= 1) to ``length`` <= n_ctx tokens.

    Each step runs the whole (zero-padded) context and samples position ``t`` from the logits at
    ``t - 1`` (causal, so padding never leaks). ``forced``: optional int64 [length] with -1 where
    the model samples and a token where it is fixed (image padding cells); ``max_token``: sample
    only tokens below it (pixel values, not the image BOS / padding tokens). Returns [B, length]."""
    if not 1 <= prime.shape[1] <= length <= model.cfg.n_ctx:
        raise ValueError(f"need 1 <= prime length {prime.shape[1]} <= length {length} <= n_ctx "
                         f"{model.cfg.n_ctx}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    B = prime.shape[0]
    seq = torch.zeros(B, model.cfg.n_ctx, dtype=torch.long, device=device)
    seq[:, : prime.shape[1]] = prime.to(device)
    try:
        for t in range(prime.shape[1], length):
            if forced is not None and forced[t] >= 0:
                seq[:, t] = forced[t]
                continue
            logits = model(seq)[:, t - 1].float() / temperature  # (B, V)
            if max_token is not None:
                logits[:, max_token:] = float("-inf")
            probs = torch.softmax(logits, -1).cpu()
            seq[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
    finally:
        model.train(was_training)
    return seq[:, :length].cpu()


def sample_text(model, prime: bytes, length: int, num: int = 1, temperature: float = 1.0,
                seed: int = 0) -> list[bytes]:
    """``num`` byte strings of ``length`` bytes continuing ``prime`` (at least one byte)."""
    if model.cfg.image_shape is not None:
        raise ValueError("sample_text needs a text model; use complete_images for an image model")
    if not prime:
        raise ValueError("prime must hold at least one byte (for example b'\\n')")
    p = torch.tensor(list(prime[-model.cfg.n_ctx:]), dtype=torch.long).expand(num, -1)
    out = sample(model, p, min(length, model.cfg.n_ctx), temperature,
                 torch.Generator().manual_seed(seed))
    return [bytes(row.tolist()) for row in out.to(torch.uint8)]


def complete_images(model, images: np.ndarray, given_rows: int, temperature: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Image completion: uint8 [B, R, C, Ch] -> uint8 [B, R, C, Ch] keeping the first
    ``given_rows`` rows and sampling the rest, pixel by pixel in raster order."""
    if model.cfg.image_shape is None:
        raise ValueError("complete_images needs an image model (ModelConfig.image_shape)")
    seqs = sequences_for(model.cfg, images)
    b, r, c, ch = images.shape
    if not 0 <= given_rows <= r:
        raise ValueError(f"given_rows={given_rows} must be in 0..{r}")
    batch = seqs.eval_batches(b).__next__()
    n = model.cfg.n_ctx
    grid_c = model.cfg.image_shape[1]
    # Input position t holds target t - 1; force IMAGE_PAD where that target is a padding cell.
    forced = torch.full((n + 1,), -1, dtype=torch.long)
    forced[1:][batch.weights[0] == 0] = data_mod.IMAGE_PAD
    prime = batch.inputs[:, : 1 + given_rows * grid_c * ch]
    gen = torch.Generator().manual_seed(seed)
    pixel_values = data_mod.IMAGE_BOS  # tokens below it are pixel values
    seq = sample(model, prime, n, temperature, gen, forced[:n], max_token=pixel_values)
    # The last target (input position N) needs one more step unless it is padding.
    last = torch.full((b, 1), data_mod.IMAGE_PAD, dtype=torch.long)
    if forced[n] < 0:
        with torch.no_grad():
            logits = model(seq.to(next(model.parameters()).device))[:, n - 1].float()
        logits[:, pixel_values:] = float("-inf")
        last = torch.multinomial(torch.softmax(logits / temperature, -1).cpu(), 1, generator=gen)
    tokens = torch.cat([seq[:, 1:], last], 1)  # (B, N) targets, raster order of the grid
    grid = tokens.reshape(b, model.cfg.image_shape[0], grid_c, ch)[:, :r, :c]
    return grid.to(torch.uint8).numpy()
