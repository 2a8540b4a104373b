"""Attention memory: the Sparse Transformer's table, block-sparse layouts, kernels, reference.

Four models, all pure functions of their arguments (bytes are exact integers):

1. The attention matrix kept for backward (Child et al. 2019, "Generating Long Sequences with
   Sparse Transformers", the memory table of a 64-layer, 4-head model; ``SEED_ROWS``):

       stored      = N^2 * H * L * s      every layer's N x N matrix per head, s bytes each
       recomputed  = N^2 * H * s          one layer's: recomputed (checkpointed) in backward

   with s = 4 (float32). Block-sparse layouts keep only their non-empty blocks' entries,
   ``nnz * b^2 * s`` per layer (``sparse_attention_bytes``; or the exact allowed pairs), and our
   flash-style kernels keep no score matrix at all: only the log-sum-exp, N * H * 4 per layer.

2. ``kernel_memory_bytes``: the analytic peak of one call of our fused kernels, which the sweep's
   report plots against the measured peak:

       fwd      4 T + R + P               T = B H N D e (q, k, v, o),  R = B H N 4 (LSE, fp32)
       fwd+bwd  8 T + 2 R + P             + dO, dQ, dK, dV and delta = rowsum(dO * O), fp32

   where e is the dtype's size and P = ``plan_for(layout).nbytes`` (the device plan).

3. ``dense_memory_bytes``: the dense reference's working memory beyond inputs and outputs
   (add them with ``head_dim``). Materialised (``chunked=False``, the obvious implementation):
   S = B H N^2 scores, fwd ``S (a + e) + H N^2`` (fp32 scores a = 4, probabilities in dtype,
   the bool mask), fwd+bwd ``S (2 a + e) + H N^2`` (autograd keeps P; backward adds dP / dS).
   Chunked (stbench.reference.dense): c query rows per chunk with B c N a <= chunk_bytes, c a
   multiple of the block, and about 2 (fwd) or 6 (fwd+bwd) such tiles live, plus a [c, N] mask
   and the LSE: bounded independently of N^2.

4. ``paper_figure``: the seed table's units and rounding (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("fwd", "fwd+bwd")
PAPER_LAYERS, PAPER_HEADS = 64, 4  # the model of the paper's memory table
PAPER_ITEMSIZE = 4  # float32 attention weights
LSE_ITEMSIZE = 4  # log-sum-exp and delta rows are fp32 in every kernel
MASK_ITEMSIZE = 1  # torch.bool
# Decimal (SI) units, as the paper prints them: 1 GB = 10^9 bytes (1.07e9 bytes -> "1.0 GB").
UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
# The dense reference's live score-sized tiles per chunk (reference/dense.py docstring).
DENSE_CHUNK_TILES = {"fwd": 2, "fwd+bwd": 6}
DENSE_CHUNK_BYTES = 256 * 2**20  # reference/dense.py DEFAULT_CHUNK_BYTES
DENSE_CHUNK_BLOCK = 16  # rows per chunk are a multiple of the layout block (finest: 16)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported: use one of {MODES}")


def _positive(**kw) -> None:
    for name, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a positive int")


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    return torch.empty(0, dtype=dtype).element_size()


# ---------------------------------------------------------------- 1. the paper's model
def attention_matrix_bytes(
    n_ctx: int, heads: int, layers: int, itemsize: int = PAPER_ITEMSIZE, recompute: bool = False
) -> int:
    """Dense attention weights kept for backward: ``N^2 * H * L * s`` (stored) or, recomputed
    during backward (checkpointing), one layer's ``N^2 * H * s``."""
    _positive(n_ctx=n_ctx, heads=heads, layers=layers, itemsize=itemsize)
    return n_ctx * n_ctx * heads * (1 if recompute else layers) * itemsize


def coarse_nnz(layout, block: int) -> int:
    """Non-empty blocks over all heads if ``layout``'s token pattern were cut into blocks of
    ``block`` (a multiple of ``layout.block``): a coarse block is non-empty iff one of its fine
    blocks is. Exact; O(nnz). Needs ``layout.n_ctx % block == 0``."""
    if block % layout.block or layout.n_ctx % block:
        raise ValueError(
            f"block={block} must be a multiple of the layout's block ({layout.block}) and divide "
            f"n_ctx={layout.n_ctx}"
        )
    r = block // layout.block
    nb = layout.n_ctx // block
    if layout.perms is not None:
        raise ValueError(
            "coarse_nnz counts blocks in the layout's own order; this layout carries a "
            "permutation, so build it at the coarse block instead"
        )
    key = (layout.heads_idx.long() * nb + layout.q_blocks.long() // r) * nb
    key = key + layout.k_blocks.long() // r
    return int(torch.unique(key).numel())


def sparse_attention_bytes(
    layout,
    layers: int,
    itemsize: int = PAPER_ITEMSIZE,
    recompute: bool = False,
    exact: bool = False,
    block: int | None = None,
) -> int:
    """Attention weights of a block-sparse layout kept for backward (``recompute``: one layer's).

    Block-sparse kernels store whole blocks: ``nnz * b^2 * s * L`` (nnz summed over heads; at
    ``block`` if given, via ``coarse_nnz``). ``exact=True`` counts only the allowed pairs,
    ``allowed_pairs * s * L`` (a lower bound no block format reaches)."""
    _positive(layers=layers, itemsize=itemsize)
    if exact:
        entries = layout.allowed_pairs
    elif block is None or block == layout.block:
        entries = layout.nnz * layout.block**2
    else:
        entries = coarse_nnz(layout, block) * block**2
    return entries * itemsize * (1 if recompute else layers)


def lse_bytes(n_ctx: int, heads: int, layers: int, batch: int = 1, recompute: bool = False) -> int:
    """What a flash-style kernel keeps for backward instead of the weights: the fp32 log-sum-exp,
    ``B * N * H * 4 * L`` (``recompute``: one layer's)."""
    _positive(n_ctx=n_ctx, heads=heads, layers=layers, batch=batch)
    return batch * n_ctx * heads * LSE_ITEMSIZE * (1 if recompute else layers)


# ---------------------------------------------------------------- 2. our kernels
def kernel_memory_bytes(
    layout, batch: int, head_dim: int, dtype: torch.dtype, mode: str, index_bytes: int = 0
) -> int:
    """Analytic peak memory of one call of our fused block-sparse kernels (Triton, CuPy).

    With T = B*H*N*D*e (one [B, H, N, D] tensor in ``dtype``), R = B*H*N*4 (one fp32 row
    statistic) and P = the device plan's bytes (``plan_for(layout).nbytes``):

        fwd      4 T + R + P         q, k, v, o and the LSE
        fwd+bwd  8 T + 2 R + P       also dO, dQ, dK, dV and delta = rowsum(dO * O)

    ``index_bytes``: a backend's own index tables built from the plan (the Triton backend's
    tiles, kernels/triton/tiles.py), added to P. Nothing O(N^2) and no score tile in global
    memory (the Triton backend allocates exactly out, LSE / delta, dQ, dK, dV). A permuted
    layout (the strided transpose) is assumed folded into the kernels' indexing, as the Triton
    backend does; a backend gathering permuted copies adds up to 4 T (fwd) / 8 T (fwd+bwd)."""
    from stbench.layouts import plan_for

    _check_mode(mode)
    _positive(batch=batch, head_dim=head_dim)
    e = itemsize(dtype)
    tensor = batch * layout.heads * layout.n_ctx * head_dim * e
    rows = batch * layout.heads * layout.n_ctx * LSE_ITEMSIZE
    if not isinstance(index_bytes, int) or index_bytes < 0:
        raise ValueError(f"index_bytes={index_bytes!r} must be a non-negative int")
    plan = plan_for(layout).nbytes + index_bytes
    if mode == "fwd":
        return 4 * tensor + rows + plan
    return 8 * tensor + 2 * rows + plan


# ---------------------------------------------------------------- 3. the dense reference
def dense_chunk_rows(n_ctx: int, batch: int, chunk_bytes: int = DENSE_CHUNK_BYTES,
                     acc_itemsize: int = 4, block: int = DENSE_CHUNK_BLOCK) -> int:
    """Query rows per chunk of the dense reference: the largest multiple of ``block`` with
    B * c * N * a <= chunk_bytes, at least one block, at most N (reference/dense.chunk_rows)."""
    rows = chunk_bytes // max(1, batch * n_ctx * acc_itemsize)
    return max(block, min(n_ctx, rows // block * block))


def dense_memory_bytes(
    n_ctx: int,
    heads: int,
    batch: int,
    dtype: torch.dtype,
    mode: str,
    chunked: bool = False,
    head_dim: int | None = None,
    chunk_bytes: int = DENSE_CHUNK_BYTES,
) -> int:
    """Working memory of dense masked attention (the wall the sparse kernels remove).

    With S = B*H*N^2 score elements, a = 4 (fp32 softmax; 8 for fp64) and e the dtype's size:

        materialised  fwd      S (a + e) + H N^2            scores fp32, P in dtype, bool mask
                      fwd+bwd  S (2 a + e) + H N^2          autograd keeps P; adds dP, dS
        chunked       fwd      2 t + c N + R                t = B c N a, one score tile of c
                      fwd+bwd  6 t + c N + 2 R              rows; R = B H N a (LSE; delta)

    (c from ``dense_chunk_rows``). With ``head_dim`` the inputs and outputs are added as in
    ``kernel_memory_bytes`` (4 T fwd, 8 T fwd+bwd, T = B H N D e); without it they are not."""
    _check_mode(mode)
    _positive(n_ctx=n_ctx, heads=heads, batch=batch, chunk_bytes=chunk_bytes)
    e = itemsize(dtype)
    a = 8 if dtype == torch.float64 else 4
    if chunked:
        c = dense_chunk_rows(n_ctx, batch, chunk_bytes, a)
        tile = batch * c * n_ctx * a
        rows = batch * heads * n_ctx * a
        extra = DENSE_CHUNK_TILES[mode] * tile + c * n_ctx * MASK_ITEMSIZE
        extra += rows if mode == "fwd" else 2 * rows
    else:
        scores = batch * heads * n_ctx * n_ctx
        per = a + e if mode == "fwd" else 2 * a + e
        extra = scores * per + heads * n_ctx * n_ctx * MASK_ITEMSIZE
    if head_dim is not None:
        _positive(head_dim=head_dim)
        tensor = batch * heads * n_ctx * head_dim * e
        extra += (4 if mode == "fwd" else 8) * tensor
    return extra


# ---------------------------------------------------------------- 4. units and rounding
def human_bytes(nbytes: int | float, digits: int = 3) -> str:
    """``nbytes`` in decimal units with ``digits`` significant figures: 1073741824 -> '1.07 GB'."""
    for unit, size in UNITS:
        text = _sig(nbytes / size, digits)
        if float(text) >= 1:  # 999_999 B reads "1 MB", not "1000 kB"
            return f"{text} {unit}"
    return f"{int(nbytes)} B"


def _sig(x: float, digits: int) -> str:
    s = f"{x:.{digits}g}"
    if "e" in s:  # 1000 with 3 digits: print the integer
        s = f"{x:.0f}"
    return s


def paper_figure(nbytes: int, rounding: str = "cut") -> str:
    """``nbytes`` the way the Sparse Transformer's memory table prints it.

    Decimal units (the largest of TB/GB/MB/kB not above the value); one decimal below 10 units,
    whole units from 10 up. No single rounding rule gives all of the paper's eight figures:
    16.78 MB -> "16 MB" and 154.6 GB -> "154 GB" are cut down, 150.99 MB -> "151 MB" and
    589.8 GB -> "590 GB" go up. ``rounding="cut"`` (the paper's own, seven of eight): read the
    value to 4 significant figures (150.99 -> 151.0), then cut to the printed digits.
    ``rounding="nearest"``: round to the printed digits (the audio row's 589.8 -> 590)."""
    if rounding not in ("cut", "nearest"):
        raise ValueError(f"rounding={rounding!r}: use 'cut' or 'nearest'")
    if not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"nbytes={nbytes!r} must be a positive int")
    unit, size = next(((u, s) for u, s in UNITS if nbytes >= s), ("B", 1))
    x = nbytes / size
    if rounding == "cut":
        x = float(f"{x:.4g}")
        tenths = int(x * 10 + 1e-9)  # floor, immune to 9.6000000001-style float noise
        whole = int(x + 1e-9)
    else:
        tenths, whole = int(round(x * 10)), int(round(x))
    if tenths < 100:
        return f"{tenths // 10}.{tenths % 10} {unit}"
    return f"{whole} {unit}"


# ---------------------------------------------------------------- the seed table's rows
@dataclass(frozen=True)
class SeedRow:
    """One row of the paper's memory table (64 layers, 4 heads, float32 weights).

    ``stored`` / ``recomputed``: the figures as printed ("" where the brief quotes none);
    ``stored_rounding`` / ``recomputed_rounding``: the ``paper_figure`` rounding that reproduces
    them from the model's bytes."""

    label: str
    n_ctx: int
    stored: str
    recomputed: str
    stored_rounding: str = "cut"
    recomputed_rounding: str = "cut"


SEED_ROWS = (
    SeedRow("1024 text tokens", 1024, "1.0 GB", "16 MB"),
    SeedRow("32x32x3 pixels (CIFAR-10)", 3072, "9.6 GB", "151 MB"),
    SeedRow("64x64x3 pixels (ImageNet 64)", 12288, "154 GB", "2.4 GB"),
    # 589.8 GB printed as 590: the one figure the paper rounds to nearest. Its recomputed figure
    # is not quoted in issue 2; the model's (9.216 GB -> "9.2 GB") is shown, marked as ours.
    SeedRow("24,000 audio samples (12 kHz)", 24000, "590 GB", "", stored_rounding="nearest"),
)

# Block-sparse columns: the paper's patterns, l = 128 (enwik8's fixed: l = 128, c = 32), counted
# at block 32 and 128. "strided" is the paper's merged head (local(l) or (q - k) % l == 0).
SEED_STRIDE = 128
SEED_BLOCKS = (32, 128)
SEED_PATTERNS = ("strided", "fixed")


def seed_pattern_layout(pattern: str, n_ctx: int, heads: int = 1):
    """The token pattern of a seed-table column at block 32 (coarsen with ``coarse_nnz``):
    ``merged_strided(l=128)`` or ``fixed(l=128, c=32)`` (vertsize 1 at block 32)."""
    from stbench import layouts

    if pattern == "strided":
        return layouts.merged_strided(n_ctx, block=32, stride=SEED_STRIDE, heads=heads)
    if pattern == "fixed":
        return layouts.fixed(n_ctx, block=32, stride=SEED_STRIDE, heads=heads, num_verts=1,
                             vertsize=1)
    raise ValueError(f"pattern={pattern!r}: use one of {SEED_PATTERNS}")


def seed_table(layers: int = PAPER_LAYERS, heads: int = PAPER_HEADS) -> list[dict]:
    """The paper's table with the model's bytes and block-sparse columns, one dict per row.

    Keys: label, n_ctx, stored/recomputed (printed figures), stored_bytes/recomputed_bytes,
    stored_model/recomputed_model (``paper_figure`` of the bytes), lse_bytes (flash-style, all
    layers), and ``sparse[(pattern, block)]`` = stored bytes of the non-empty blocks (None where
    ``block`` does not divide N). The paper's patterns use the same mask in every head, so one
    head is built and multiplied by ``heads``."""
    rows = []
    for r in SEED_ROWS:
        stored = attention_matrix_bytes(r.n_ctx, heads, layers)
        rec = attention_matrix_bytes(r.n_ctx, heads, layers, recompute=True)
        sparse = {}
        for pattern in SEED_PATTERNS:
            lay = seed_pattern_layout(pattern, r.n_ctx)
            for b in SEED_BLOCKS:
                ok = r.n_ctx % b == 0
                sparse[(pattern, b)] = (
                    heads * sparse_attention_bytes(lay, layers, block=b) if ok else None
                )
            sparse[(pattern, "exact")] = heads * sparse_attention_bytes(lay, layers, exact=True)
        rows.append(dict(
            label=r.label, n_ctx=r.n_ctx, stored=r.stored, recomputed=r.recomputed,
            stored_bytes=stored, recomputed_bytes=rec,
            stored_model=paper_figure(stored, r.stored_rounding),
            recomputed_model=paper_figure(rec, r.recomputed_rounding),
            lse_bytes=lse_bytes(r.n_ctx, heads, layers), sparse=sparse,
        ))
    return rows
