"""The Sparse Transformer (Child et al., 2019) as a small, readable PyTorch model.

Architecture (paper, section 5.2): token embedding + learned position embeddings (1-D for text;
row, column and channel embeddings summed for images), then ``layers`` pre-LN residual blocks

    a = dropout(attn(LN(h)));   h = h + a
    b = dropout(W2 GELU(W1 LN(h) + b1) + b2);   h = h + b

then a final LayerNorm and a linear head to ``vocab`` logits. The output projections of both
residual branches (attention ``proj`` and MLP ``fc2``) are initialised with standard deviation
``INIT_STD / sqrt(2 * layers)`` (the paper's 1/sqrt(2N) scaling), so the residual stream's variance
does not grow with depth.

Attention goes through ``stbench.attention(q, k, v, layout, backend=...)`` with q, k, v
[B, H, N, D], so any registered backend computes it and the same weights can be run on each.
The factorised patterns per layer (``ModelConfig.attention``):

- ``dense``:   every layer causal;
- ``strided``: layers alternate ``local(window=stride)`` (even layers) and ``strided(stride)``
  (odd layers): the paper's interleaved factorisation, A(1) then A(2);
- ``fixed``:   every layer the ``fixed`` pattern (own block of ``stride`` tokens + the summary
  columns), as in the released code;
- ``local``:   every layer local(window=stride) (a baseline).

Gradient checkpointing (``checkpoint=True``) recomputes each attention and feed-forward branch in
the backward pass (torch.utils.checkpoint, use_reentrant=False); bf16 autocast is the caller's
``torch.autocast`` (see reference/train.py), under which q, k, v reach the backend in bf16.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import stbench
from stbench import layouts

INIT_STD = 0.02  # GPT-2 style initial weight scale; residual projections get /sqrt(2 * layers)
ATTENTION_KINDS = ("dense", "strided", "fixed", "local")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one model; ``image_shape`` (rows, cols, channels) switches the
    position embedding from 1-D to row + column + channel, and then n_ctx = rows*cols*channels."""

    vocab: int = 256
    n_ctx: int = 128
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    attention: str = "strided"
    block: int = 16
    stride: int = 8
    num_verts: int = 1
    vertsize: int = 1
    image_shape: tuple[int, int, int] | None = None
    checkpoint: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}: choose one of {ATTENTION_KINDS}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of heads={self.heads}")
        for name in ("vocab", "n_ctx", "d_model", "heads", "layers", "mlp_ratio", "stride"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive int")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.image_shape is not None:
            shape = tuple(int(x) for x in self.image_shape)
            object.__setattr__(self, "image_shape", shape)
            if len(shape) != 3 or math.prod(shape) != self.n_ctx:
                raise ValueError(
                    f"image_shape={shape} must be (rows, cols, channels) with product "
                    f"n_ctx={self.n_ctx}"
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict:
        """JSON-able form (for checkpoints and logs)."""
        d = asdict(self)
        d["image_shape"] = list(self.image_shape) if self.image_shape else None
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        if d.get("image_shape") is not None:
            d["image_shape"] = tuple(d["image_shape"])
        return ModelConfig(**d)


# Named presets. ``tiny`` runs on the CPU in tests (Triton under its interpreter included):
# 2 layers, N=128, block 16, D=32; strided at stride 8 gives chunks of N/8 = 16 = one block
# (for attention='fixed' pass stride=32: fixed needs stride % block == 0, and stride = block
# would make it plain causal). ``text-8k``: Wikipedia bytes at context 8192, the paper's enwik8
# fixed pattern (l = 128, c = vertsize * block = 32); strided also works (N/l = 64, a multiple
# of the block). ``images``: Fashion-MNIST 28x28 padded to a 32x32 grid (N = 1024) so
# that the stride equals a row (32) and blocks divide both N and N/l.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(),
    "text-8k": ModelConfig(
        vocab=256, n_ctx=8192, d_model=256, heads=4, layers=8, dropout=0.1, attention="fixed",
        block=32, stride=128, checkpoint=True,
    ),
    "images": ModelConfig(
        vocab=258, n_ctx=1024, d_model=256, heads=4, layers=8, dropout=0.1, attention="strided",
        block=32, stride=32, image_shape=(32, 32, 1),
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset, optionally with fields replaced (``preset('tiny', attention='fixed')``)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown: choose one of {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name].to_dict(), **overrides})


def layer_pattern(cfg: ModelConfig, layer: int) -> str:
    """The pattern of layer ``layer``: 'causal', 'local', 'strided' or 'fixed'."""
    if cfg.attention == "dense":
        return "causal"
    if cfg.attention == "strided":
        return "local" if layer % 2 == 0 else "strided"  # interleaved A(1), A(2)
    return cfg.attention


@functools.lru_cache(maxsize=16)
def _pattern_layout(cfg: ModelConfig, pattern: str) -> "layouts.Layout":
    n, b, h, s = cfg.n_ctx, cfg.block, cfg.heads, cfg.stride
    if pattern == "causal":
        return layouts.causal(n, block=b, heads=h)
    if pattern == "local":
        return layouts.local(n, block=b, window=s, heads=h)
    if pattern == "strided":
        return layouts.strided(n, block=b, stride=s, heads=h)
    return layouts.fixed(n, block=b, stride=s, heads=h, num_verts=cfg.num_verts,
                         vertsize=cfg.vertsize)


def layer_layout(cfg: ModelConfig, layer: int) -> "layouts.Layout":
    """The attention layout of layer ``layer`` (layers with one pattern share one Layout, which
    is immutable; see the module docstring)."""
    return _pattern_layout(cfg, layer_pattern(cfg, layer))


class SparseAttention(nn.Module):
    """Multi-head causal self-attention over a Layout: x [B, N, C] -> [B, N, C]."""

    def __init__(self, cfg: ModelConfig, layout):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, N, C)
        # (B, N, C) -> (B, H, N, D), contiguous as the backends expect
        q, k, v = (t.view(B, N, self.cfg.heads, -1).transpose(1, 2).contiguous() for t in (q, k, v))
        y = stbench.attention(q, k, v, self.layout, backend=backend)  # (B, H, N, D)
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    """x [B, N, C] -> dropout(W2 GELU(W1 x + b1) + b2), hidden width mlp_ratio * C."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN residual block: h + attn(LN(h)), then + mlp(LN(.)); both branches checkpointable."""

    def __init__(self, cfg: ModelConfig, layout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = SparseAttention(cfg, layout), MLP(cfg)
        self.use_checkpoint = cfg.checkpoint

    def _attn(self, x, backend):
        return self.attn(self.ln1(x), backend)

    def _mlp(self, x):
        return self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor, backend: str) -> torch.Tensor:  # (B, N, C)
        if self.use_checkpoint and torch.is_grad_enabled():
            x = x + checkpoint(self._attn, x, backend, use_reentrant=False)
            return x + checkpoint(self._mlp, x, use_reentrant=False)
        x = x + self._attn(x, backend)
        return x + self._mlp(x)


class SparseTransformer(nn.Module):
    """Autoregressive Sparse Transformer: tokens int64 [B, N] -> logits [B, N, vocab].

    ``backend`` names the stbench attention backend used by default; ``forward(..., backend=)``
    overrides it per call, so one set of weights can be evaluated on every backend."""

    def __init__(self, cfg: ModelConfig, backend: str = "dense"):
        super().__init__()
        self.cfg, self.backend = cfg, backend
        self.layouts = [layer_layout(cfg, i) for i in range(cfg.layers)]
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.d_model)
        if cfg.image_shape is None:
            self.pos_emb = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))  # (N, C)
        else:
            rows, cols, chans = cfg.image_shape
            self.row_emb = nn.Parameter(torch.zeros(rows, 1, 1, cfg.d_model))
            self.col_emb = nn.Parameter(torch.zeros(1, cols, 1, cfg.d_model))
            self.chan_emb = nn.Parameter(torch.zeros(1, 1, chans, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, lay) for lay in self.layouts)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise: N(0, INIT_STD) weights and position embeddings, zero biases, unit
        LayerNorms, residual projections N(0, INIT_STD / sqrt(2 * layers))."""
        resid_std = INIT_STD / math.sqrt(2 * self.cfg.layers)
        residual_out = {id(b.attn.proj) for b in self.blocks} | {id(b.mlp.fc2) for b in self.blocks}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = resid_std if id(m) in residual_out else INIT_STD
                nn.init.normal_(m.weight, 0.0, std, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, INIT_STD, generator=generator)
        for name, p in self.named_parameters(recurse=False):  # position embeddings
            nn.init.normal_(p, 0.0, INIT_STD, generator=generator)

    def position_embedding(self) -> torch.Tensor:
        """(N, C): learned 1-D embeddings, or row + column + channel embeddings in raster order."""
        if self.cfg.image_shape is None:
            return self.pos_emb
        return (self.row_emb + self.col_emb + self.chan_emb).reshape(self.cfg.n_ctx, -1)

    def forward(self, idx: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        B, N = idx.shape
        if N != self.cfg.n_ctx:
            raise ValueError(
                f"input has N={N} tokens but the model's n_ctx={self.cfg.n_ctx}: the layouts "
                "are built for a fixed context; pad or crop the input"
            )
        backend = backend or self.backend
        x = self.drop(self.tok_emb(idx) + self.position_embedding())  # (B, N, C)
        for block in self.blocks:
            x = block(x, backend)  # (B, N, C)
        return self.head(self.ln_f(x))  # (B, N, vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
