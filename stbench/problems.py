"""The standard problems as data: named layout specs and frozen problems.

Standard problem: bf16, H = 8, D = 64, B x N = 65,536 tokens, N = 1024 .. 65536, causal, stride
``l = max(128, 2^round(log2(sqrt(N))))``, block 128. Layout specs (``LAYOUT_SPECS``):

    causal    plain causal
    local     local(window l)
    strided   the paper's strided head after the transpose (block-diagonal chunks of N/l tokens;
              needs (N/l) % block == 0, so it does not exist at block 128 below N = 16384)
    fixed     fixed(stride max(l, 512), num_verts 1, vertsize 1)
    st_mix    even heads local(l), odd heads strided(l)
    paper_fixed  the paper's exact fixed mask: l = 128, c = vertsize * block = 32 (block 32)
    paper_union  the paper's merged strided head: local(128) or (q - k) % 128 == 0 (block 16)
    paper_*_128  the same two masks re-blocked to 128 (FlexAttention's default granularity)

The paper's two masks also have their token rule as a FlexAttention user writes it
(``TOKEN_RULES``, by spec name), so the peer ``flex_predicate`` can build its BlockMask with
``create_block_mask`` from the rule rather than from our layout.

A spec names a builder and its parameters; parameters left out follow the stride rule, so one
spec serves every N. Building goes through ``stbench.layouts``' generators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from stbench import layouts

STANDARD_TOKENS = 65536  # B x N
STANDARD_HEADS = 8
STANDARD_HEAD_DIM = 64
STANDARD_DTYPE = "bfloat16"
STANDARD_BLOCK = 128  # FlexAttention's default block: apples to apples
STANDARD_NS = tuple(2**k for k in range(10, 17))  # 1024 .. 65536
PAPER_STRIDE = 128
PAPER_C = 32  # the paper's c = vertsize * block for 'fixed'
FIXED_MIN_STRIDE = 512  # the standard 'fixed' uses stride max(l, 512)
DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def stride_for(n_ctx: int) -> int:
    """The standard stride rule: l = max(128, 2^round(log2(sqrt(N))))."""
    return max(128, 2 ** round(math.log2(math.sqrt(n_ctx))))


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype={name!r} is not supported: use one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- builders
def _causal(n, block, heads):
    return layouts.causal(n, block=block, heads=heads)


def _local(n, block, heads, window=None):
    return layouts.local(n, block=block, window=window or stride_for(n), heads=heads)


def _strided(n, block, heads, stride=None):
    return layouts.strided(n, block=block, stride=stride or stride_for(n), heads=heads)


def _fixed(n, block, heads, stride=None, num_verts=1, vertsize=None, c=None):
    stride = stride or max(stride_for(n), FIXED_MIN_STRIDE)
    if vertsize is None:
        vertsize = 1 if c is None else c // block
        if c is not None and (c % block or vertsize < 1):
            raise layouts.LayoutError(
                f"fixed c={c} must be a multiple of block={block}: use block <= {c}"
            )
    return layouts.fixed(n, block=block, stride=stride, heads=heads, num_verts=num_verts,
                         vertsize=vertsize)


def _merged_strided(n, block, heads, stride=None):
    gen = getattr(layouts, "merged_strided", None)
    if gen is None:
        raise layouts.LayoutError("layouts.merged_strided is not available in this stbench")
    return gen(n, block=block, stride=stride or stride_for(n), heads=heads)


def _st_mix(n, block, heads, stride=None):
    stride = stride or stride_for(n)
    gen = getattr(layouts, "st_mix", None)
    if gen is not None:
        return gen(n, block=block, stride=stride, heads=heads)
    return mix_heads(_local(n, block, heads, stride), _strided(n, block, heads, stride), "st_mix")


def mix_heads(even: layouts.Layout, odd: layouts.Layout, name: str) -> layouts.Layout:
    """Heads 0, 2, 4, ... from ``even`` and 1, 3, 5, ... from ``odd`` (same N, H, block)."""
    if (even.n_ctx, even.heads, even.block) != (odd.n_ctx, odd.heads, odd.block):
        raise layouts.LayoutError("mix_heads needs layouts of one n_ctx, heads and block")
    parts, perms, head_perm = [], [], [-1] * even.heads
    for src, parity in ((even, 0), (odd, 1)):
        sel = (src.heads_idx % 2) == parity
        mask_ids = src.mask_ids[sel].clone()
        offset = sum(p[5].shape[0] for p in parts)
        mask_ids[mask_ids >= 0] += offset
        parts.append((src.heads_idx[sel], src.q_blocks[sel], src.k_blocks[sel], src.kinds[sel],
                      mask_ids, src.masks))
        for h in range(parity, src.heads, 2):
            p = src.perm_of_head(h)
            if p is not None:
                head_perm[h] = len(perms)
                perms.append(p)
    cat = [torch.cat([p[i] for p in parts]) for i in range(6)]
    return layouts.Layout.from_parts(
        even.n_ctx, even.heads, even.block, name, *cat,
        perms=torch.stack(perms) if perms else None,
        head_perm=tuple(head_perm) if perms else None,
    )


BUILDERS = {
    "causal": _causal, "local": _local, "strided": _strided, "fixed": _fixed,
    "merged_strided": _merged_strided, "st_mix": _st_mix,
}


def builder_params(builder: str) -> list[str]:
    """The parameters a spec may set for ``builder`` (all but n, block and heads)."""
    import inspect

    return list(inspect.signature(BUILDERS[builder]).parameters)[3:]


@dataclass(frozen=True)
class LayoutSpec:
    """A named layout recipe: ``builder`` from ``BUILDERS`` with ``params`` (name, value) pairs;
    parameters left out follow the stride rule. ``block`` is the block it is built at."""

    name: str
    builder: str
    block: int = STANDARD_BLOCK
    params: tuple[tuple[str, object], ...] = ()
    fit_block: bool = False  # if the pattern cannot exist at ``block``, use the largest that fits
    reblock: int | None = None  # then re-block the same token pattern to this block (exact)

    def __post_init__(self):
        if self.builder not in BUILDERS:
            raise ValueError(
                f"layout {self.name!r}: builder={self.builder!r} is unknown: use one of "
                f"{', '.join(BUILDERS)}"
            )
        accepted = builder_params(self.builder)
        unknown = sorted(k for k, _ in self.params if k not in accepted)
        if unknown:
            raise ValueError(
                f"layout {self.name!r}: builder {self.builder!r} has no parameter "
                f"{', '.join(unknown)}: it takes {', '.join(accepted) or 'none'} (N, block and "
                "heads come from the grid)"
            )
        if self.reblock is not None and self.reblock not in layouts.ALLOWED_BLOCKS:
            raise ValueError(f"layout {self.name!r}: reblock={self.reblock!r} must be one of "
                             f"{layouts.ALLOWED_BLOCKS}")

    def build(self, n_ctx: int, heads: int, block: int | None = None) -> layouts.Layout:
        """The layout at ``n_ctx`` with ``heads`` heads (LayoutError when it cannot exist; with
        ``fit_block``, smaller blocks are tried first: the strided transpose needs
        (N / l) % block == 0, so at N = 4096, l = 128 it exists at block 32, not 128)."""
        first = block or self.block
        tries = [first]
        if self.fit_block and block is None:
            tries += [b for b in sorted(layouts.ALLOWED_BLOCKS, reverse=True) if b < first]
        for i, b in enumerate(tries):
            try:
                lay = BUILDERS[self.builder](n_ctx, b, heads, **dict(self.params))
                break
            except layouts.LayoutError:
                if i == len(tries) - 1:
                    raise
        if self.reblock and block is None:
            lay = lay.reblock(self.reblock)
        return lay.renamed(self.name) if lay.name != self.name else lay

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        tail = f" re-blocked to {self.reblock}" if self.reblock else ""
        return f"{self.builder}({args}) at block {self.block}{tail}"


LAYOUT_SPECS: dict[str, LayoutSpec] = {
    s.name: s
    for s in (
        LayoutSpec("causal", "causal"),
        LayoutSpec("local", "local"),
        LayoutSpec("strided", "strided"),
        LayoutSpec("fixed", "fixed"),
        LayoutSpec("st_mix", "st_mix"),
        LayoutSpec("paper_fixed", "fixed", block=32,
                   params=(("stride", PAPER_STRIDE), ("c", PAPER_C))),
        LayoutSpec("paper_union", "merged_strided", block=16, params=(("stride", PAPER_STRIDE),)),
        # the same exact masks at block 128, as a user hands them to FlexAttention by default
        LayoutSpec("paper_fixed_128", "fixed", block=32,
                   params=(("stride", PAPER_STRIDE), ("c", PAPER_C)), reblock=128),
        LayoutSpec("paper_union_128", "merged_strided", block=16,
                   params=(("stride", PAPER_STRIDE),), reblock=128),
    )
}
STANDARD_LAYOUTS = ("causal", "local", "strided", "fixed", "st_mix")


def _paper_fixed_rule(q, k):
    """The paper's fixed head (l = 128, c = 32, head h' = 0): k <= q, and k in q's own period
    or in the last c keys of its period. q, k: broadcastable int tensors of token indices."""
    own = q // PAPER_STRIDE == k // PAPER_STRIDE
    summary = k % PAPER_STRIDE >= PAPER_STRIDE - PAPER_C
    return (k <= q) & (own | summary)


def _paper_union_rule(q, k):
    """The paper's merged strided head (l = 128): k <= q and (q - k < l or (q - k) % l == 0)."""
    d = q - k
    return (k <= q) & ((d < PAPER_STRIDE) | (d % PAPER_STRIDE == 0))


# spec name -> the token rule fn(q_idx, k_idx) -> bool tensor, in original token order
TOKEN_RULES = {
    "paper_fixed": _paper_fixed_rule, "paper_fixed_128": _paper_fixed_rule,
    "paper_union": _paper_union_rule, "paper_union_128": _paper_union_rule,
}


def layout_spec(name: str) -> LayoutSpec:
    try:
        return LAYOUT_SPECS[name]
    except KeyError:
        raise ValueError(
            f"layout {name!r} is not a known spec: use one of {', '.join(LAYOUT_SPECS)} or "
            "define it in a [layout.NAME] table of the sweep's TOML file"
        ) from None


@dataclass(frozen=True)
class Problem:
    """One attention problem: q, k, v of shape [batch, heads, n_ctx, head_dim] in ``dtype``,
    over ``layout``, in ``mode`` ('fwd' or 'fwd+bwd')."""

    layout: LayoutSpec
    n_ctx: int
    batch: int
    heads: int = STANDARD_HEADS
    head_dim: int = STANDARD_HEAD_DIM
    dtype: str = STANDARD_DTYPE
    mode: str = "fwd"
    seed: int = 0

    def __post_init__(self):
        dtype_of(self.dtype)
        if self.mode not in ("fwd", "fwd+bwd"):
            raise ValueError(f"mode={self.mode!r}: use 'fwd' or 'fwd+bwd'")
        for k in ("n_ctx", "batch", "heads", "head_dim"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{k}={v!r} must be a positive int")

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_of(self.dtype)

    def build_layout(self, block: int | None = None) -> layouts.Layout:
        return self.layout.build(self.n_ctx, self.heads, block)

    def inputs(self, device, requires_grad: bool | None = None):
        """Seeded q, k, v [B, H, N, D] (standard normal), drawn on ``device`` by a generator of
        that device (fast at B x N = 65536; the same numbers on every run of one device kind)."""
        device = torch.device(device)
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self.n_ctx)
        shape = (self.batch, self.heads, self.n_ctx, self.head_dim)
        grad = self.mode == "fwd+bwd" if requires_grad is None else requires_grad
        out = []
        for _ in range(3):
            t = torch.randn(shape, generator=g, dtype=torch.float32, device=device)
            out.append(t.to(self.torch_dtype).requires_grad_(grad))
        return tuple(out)

    def label(self) -> str:
        return (f"{self.layout.name} N={self.n_ctx} B={self.batch} H={self.heads} "
                f"D={self.head_dim} {self.dtype} {self.mode}")


def batch_for(n_ctx: int, tokens: int = STANDARD_TOKENS) -> int:
    """B = tokens // N (at least 1)."""
    return max(1, tokens // n_ctx)


def standard_problem(layout_name: str, n_ctx: int, mode: str = "fwd",
                     dtype: str = STANDARD_DTYPE) -> Problem:
    """The standard problem at ``n_ctx`` over the named spec (bf16, H = 8, D = 64,
    B = 65536 // N), built at the largest block that fits when its own does not."""
    spec = replace(layout_spec(layout_name), fit_block=True)
    return Problem(spec, n_ctx, batch_for(n_ctx), dtype=dtype, mode=mode)


def standard_problems(ns=STANDARD_NS, layout_names=STANDARD_LAYOUTS, modes=("fwd", "fwd+bwd"),
                      dtype=STANDARD_DTYPE) -> list[Problem]:
    """The standard problems (block layouts at block 128)."""
    return [
        Problem(layout_spec(name), n, batch_for(n), dtype=dtype, mode=mode)
        for n in ns for name in layout_names for mode in modes
    ]


def paper_problems(modes=("fwd", "fwd+bwd")) -> list[Problem]:
    """The paper's exact masks at N = 12288 (B = 5) and N = 65536 (B = 1)."""
    return [
        Problem(layout_spec(name), n, b, mode=mode)
        for n, b in ((12288, 5), (65536, 1)) for name in ("paper_fixed", "paper_union")
        for mode in modes
    ]
