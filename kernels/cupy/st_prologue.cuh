// st_prologue.cuh: the index prologue every kernel starts from (st_fwd_mma.cu, st_bwd_mma.cu,
// st_scalar.cu, st_fwd_wgmma.cu). Needs st_common.cuh (LAYOUT_BLOCK, HEAD_DIM, perm_row).
#pragma once

namespace st {

// A CTA owns ROWS consecutive layout positions (queries for the forward and dQ, keys for dK/dV)
// of one (batch, head): grid (N / ROWS, B * H); ROWS divides the layout block.
struct cta_rows {
  int pos0;          // layout position of the first row owned: blockIdx.x * ROWS + row
  int blk, in0;      // its layout block, and its offset inside that block
  int nb;            // layout blocks in the sequence, N / LAYOUT_BLOCK
  int pat;           // the head's pattern (which of the plan's lists it walks)
  long long rbase;   // offset of (b, h) in the [B, H, N] tensors (lse, delta)
  long long base;    // offset of (b, h) in the [B, H, N, HEAD_DIM] tensors

  // the block's row in the plan's pointer lists (row_ptr or col_ptr): its entries are
  // ptr[list_row()] .. ptr[list_row() + 1]
  __device__ __forceinline__ int list_row() const { return pat * (nb + 1) + blk; }
};

// The prologue of the CTA (blockIdx.x, blockIdx.y = b * H + h); ``row``: the thread's row
// offset within the tile (the scalar kernels: one row per warp). ``prow`` receives the head's
// permutation row (nullptr: identity order; st_common.cuh perm_row). It comes back through the
// reference rather than as a field of cta_rows: as a field it costs the permuted variants up to
// 17 registers and 16 bytes of spills (nvcc 13.0, sm_90); through the reference every kernel's
// SASS equals that of the same prologue written out inline in the kernel.
template <int ROWS>
__device__ __forceinline__ cta_rows cta_prologue(const int* __restrict__ head_pattern,
                                                 const int* __restrict__ pattern_perm,
                                                 const int* __restrict__ perm, int H, int N,
                                                 const int*& prow, int row = 0) {
  static_assert(LAYOUT_BLOCK % ROWS == 0, "a CTA's rows must lie in one layout block");
  cta_rows c;
  const int bh = blockIdx.y, h = bh % H;
  c.pos0 = blockIdx.x * ROWS + row;
  c.blk = c.pos0 / LAYOUT_BLOCK;
  c.in0 = c.pos0 % LAYOUT_BLOCK;
  c.nb = N / LAYOUT_BLOCK;
  c.pat = head_pattern[h];
  prow = perm_row(head_pattern, pattern_perm, perm, h, N);
  c.rbase = (long long)bh * N;
  c.base = c.rbase * HEAD_DIM;
  return c;
}

}  // namespace st
