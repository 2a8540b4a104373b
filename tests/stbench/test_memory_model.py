"""The memory models against hand arithmetic, and the paper's table exactly as printed."""

import pytest
import torch

from stbench import layouts
from stbench import memory as M

# The Sparse Transformer's memory table (64 layers, 4 heads), as printed.
PUBLISHED = {
    1024: ("1.0 GB", "16 MB"),
    3072: ("9.6 GB", "151 MB"),
    12288: ("154 GB", "2.4 GB"),
    24000: ("590 GB", None),  # recomputed figure not quoted in issue 2
}


def test_seed_rows_carry_the_published_strings():
    got = {r.n_ctx: (r.stored, r.recomputed or None) for r in M.SEED_ROWS}
    assert got == PUBLISHED


@pytest.mark.parametrize("row", M.SEED_ROWS, ids=lambda r: str(r.n_ctx))
def test_model_reproduces_each_published_figure(row):
    stored = M.attention_matrix_bytes(row.n_ctx, 4, 64)
    rec = M.attention_matrix_bytes(row.n_ctx, 4, 64, recompute=True)
    assert stored == row.n_ctx**2 * 4 * 64 * 4
    assert rec * 64 == stored
    assert M.paper_figure(stored, row.stored_rounding) == row.stored
    if row.recomputed:
        assert M.paper_figure(rec, row.recomputed_rounding) == row.recomputed


def test_one_figure_is_rounded_the_rest_cut():
    # documented convention: only the audio row's 589.8 GB is printed rounded (to 590)
    nearest = [(r.n_ctx, "stored") for r in M.SEED_ROWS if r.stored_rounding == "nearest"]
    nearest += [(r.n_ctx, "rec") for r in M.SEED_ROWS if r.recomputed_rounding == "nearest"]
    assert nearest == [(24000, "stored")]
    assert M.paper_figure(M.attention_matrix_bytes(24000, 4, 64)) == "589 GB"  # cut
    assert M.paper_figure(M.attention_matrix_bytes(24000, 4, 64, recompute=True)) == "9.2 GB"


@pytest.mark.parametrize(
    "nbytes, rounding, text",
    [
        (1_073_741_824, "cut", "1.0 GB"), (1_073_741_824, "nearest", "1.1 GB"),
        (16_777_216, "cut", "16 MB"), (16_777_216, "nearest", "17 MB"),
        (150_994_944, "cut", "151 MB"),  # 150.99 read to 4 digits is 151.0
        (154_618_822_656, "cut", "154 GB"), (9_960_000, "nearest", "10 MB"),
        (9_940_000, "nearest", "9.9 MB"), (999, "cut", "999 B"), (2_000, "cut", "2.0 kB"),
    ],
)
def test_paper_figure(nbytes, rounding, text):
    assert M.paper_figure(nbytes, rounding) == text


def test_paper_figure_rejects_bad_input():
    with pytest.raises(ValueError, match="rounding"):
        M.paper_figure(10, "up")
    with pytest.raises(ValueError, match="nbytes"):
        M.paper_figure(0)


def test_seed_table_sparse_columns_match_design_densities():
    rows = {r["n_ctx"]: r for r in M.seed_table()}
    r = rows[12288]
    dense_per_layer = 12288**2 * 4 * 4  # every block of every head, float32
    # DESIGN.md: enwik8 fixed (l=128, c=32) at N=12288 has 13% of blocks at 32, 50.5% at 128
    assert r["sparse"][("fixed", 32)] / (dense_per_layer * 64) == pytest.approx(0.1302, abs=1e-4)
    assert r["sparse"][("fixed", 128)] / (dense_per_layer * 64) == pytest.approx(0.5052, abs=1e-4)
    assert rows[24000]["sparse"][("fixed", 128)] is None  # 128 does not divide 24000
    assert r["lse_bytes"] == 12288 * 4 * 4 * 64
    for row in rows.values():  # exact pairs <= blocks stored <= dense stored
        for p in M.SEED_PATTERNS:
            assert row["sparse"][(p, "exact")] <= row["sparse"][(p, 32)] <= row["stored_bytes"]


def test_sparse_bytes_by_hand():
    lay = layouts.causal(64, block=16, heads=2)  # 4 blocks a side: 10 per head, 2080 pairs
    assert M.sparse_attention_bytes(lay, layers=3) == 2 * 10 * 16 * 16 * 4 * 3
    assert M.sparse_attention_bytes(lay, 3, recompute=True) == 2 * 10 * 16 * 16 * 4
    assert M.sparse_attention_bytes(lay, 1, itemsize=2, exact=True) == 2 * 2080 * 2
    assert M.sparse_attention_bytes(lay, 1, block=32) == 2 * 3 * 32 * 32 * 4
    assert M.lse_bytes(64, 2, 3, batch=5) == 5 * 64 * 2 * 4 * 3


@pytest.mark.parametrize("coarse", [32, 64, 128])
def test_coarse_nnz_equals_rebuilding_the_token_mask(coarse):
    lay = layouts.fixed(512, block=16, stride=128, heads=2, num_verts=2, vertsize=2)
    rebuilt = layouts.from_token_mask(lay.token_mask(), block=coarse)
    assert M.coarse_nnz(lay, coarse) == rebuilt.nnz
    with pytest.raises(ValueError, match="multiple"):
        M.coarse_nnz(lay, 24)


def test_kernel_memory_by_hand():
    lay = layouts.local(256, block=32, window=64, heads=2)
    plan = layouts.plan_for(lay).nbytes
    t = 3 * 2 * 256 * 64 * 2  # B H N D e, bf16
    r = 3 * 2 * 256 * 4
    assert M.kernel_memory_bytes(lay, 3, 64, torch.bfloat16, "fwd") == 4 * t + r + plan
    assert M.kernel_memory_bytes(lay, 3, 64, torch.bfloat16, "fwd+bwd") == 8 * t + 2 * r + plan
    assert M.kernel_memory_bytes(lay, 3, 64, torch.bfloat16, "fwd", index_bytes=100) == (
        4 * t + r + plan + 100
    )
    with pytest.raises(ValueError, match="mode"):
        M.kernel_memory_bytes(lay, 3, 64, torch.bfloat16, "bwd")
    with pytest.raises(TypeError, match="dtype"):
        M.kernel_memory_bytes(lay, 3, 64, "bf16", "fwd")


def test_dense_memory_by_hand():
    n, h, b = 1024, 2, 3
    s = b * h * n * n
    assert M.dense_memory_bytes(n, h, b, torch.float16, "fwd") == s * (4 + 2) + h * n * n
    assert M.dense_memory_bytes(n, h, b, torch.float16, "fwd+bwd") == s * 10 + h * n * n
    assert M.dense_memory_bytes(n, h, b, torch.float64, "fwd") == s * 16 + h * n * n
    io = 4 * b * h * n * 64 * 2
    assert M.dense_memory_bytes(n, h, b, torch.float16, "fwd", head_dim=64) == (
        s * 6 + h * n * n + io
    )
    # chunked: 1 MiB budget -> c = 2**20 // (3 * 1024 * 4) = 85 rows -> 80 (multiple of 16)
    c = 80
    tile = b * c * n * 4
    got = M.dense_memory_bytes(n, h, b, torch.float32, "fwd", chunked=True, chunk_bytes=2**20)
    assert got == 2 * tile + c * n + b * h * n * 4
    got = M.dense_memory_bytes(n, h, b, torch.float32, "fwd+bwd", chunked=True, chunk_bytes=2**20)
    assert got == 6 * tile + c * n + 2 * b * h * n * 4


def test_dense_materialised_wall_grows_as_n_squared_chunked_does_not():
    big = M.dense_memory_bytes(65536, 8, 1, torch.bfloat16, "fwd")
    assert big == 8 * 65536**2 * 6 + 8 * 65536**2
    chunked = M.dense_memory_bytes(65536, 8, 1, torch.bfloat16, "fwd+bwd", chunked=True)
    assert chunked < 2 * 2**30  # the reference's documented bound: about 1.6 GB


def test_dense_chunk_rows_matches_the_reference():
    from stbench.reference import dense

    lay = layouts.causal(4096, block=16)
    for batch in (1, 3, 64):
        assert M.dense_chunk_rows(4096, batch) == dense.chunk_rows(lay, batch)
    assert M.DENSE_CHUNK_BYTES == dense.DEFAULT_CHUNK_BYTES


def test_human_bytes():
    assert M.human_bytes(1_073_741_824) == "1.07 GB"
    assert M.human_bytes(999) == "999 B"
    assert M.human_bytes(999_999) == "1 MB"
    assert M.human_bytes(154_618_822_656, digits=4) == "154.6 GB"
