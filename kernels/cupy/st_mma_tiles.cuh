// st_mma_tiles.cuh: warp-level tile products of the tensor-core kernels (st_fwd_mma.cu,
// st_bwd_mma.cu). Needs HEAD_DIM, BLOCK_N and SROW (padded shared-memory row, in elements) and
// ST_DTYPE 1 or 2. A warp computes MT tiles of 16 rows; g = lane / 4, t = lane % 4 as in
// mma16816. The plan walk (step_advance, step_masked) is st_plan_walk.cuh's; the tile copies
// into the padded layout are here.
#pragma once

#include "st_plan_walk.cuh"

namespace st {

// acc[m][BLOCK_N / 8][4] = A_m S^T for the warp's MT row tiles m: A_m (16 x HEAD_DIM) given as
// A fragments a[m][HEAD_DIM / 16][4], S the [BLOCK_N, HEAD_DIM] tile in shared memory. The B
// fragment (k = d, n = row of S) is two consecutive d of one row of S: ldmatrix (no transpose)
// fetches those of two k-steps at once, and each B fragment serves all MT row tiles.
template <int MT>
__device__ __forceinline__ void mma_a_bt(float (*acc)[BLOCK_N / 8][4],
                                         const unsigned (*a)[HEAD_DIM / 16][4], const elem_t* sm,
                                         int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m][nt][0] = acc[m][nt][1] = acc[m][nt][2] = acc[m][nt][3] = 0.f;
    // lane l points at row (l % 8) of the n-tile, column block (l / 8) * 8 of the k-step pair
    const elem_t* r4 = sm + (nt * 8 + (lane & 7)) * SROW + (lane >> 3) * 8;
#pragma unroll
    for (int kk = 0; kk + 1 < HEAD_DIM / 16; kk += 2) {
      unsigned b[4];
      ldsm_x4(b, r4 + kk * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma16816(acc[m][nt], a[m][kk], b[0], b[1]);
        mma16816(acc[m][nt], a[m][kk + 1], b[2], b[3]);
      }
    }
    if ((HEAD_DIM / 16) % 2) {  // an odd last k-step: two 32-bit loads
      const int kk = HEAD_DIM / 16 - 1;
      const elem_t* r = sm + (nt * 8 + g) * SROW + kk * 16 + 2 * t;
      const unsigned b0 = *reinterpret_cast<const unsigned*>(r);
      const unsigned b1 = *reinterpret_cast<const unsigned*>(r + 8);
#pragma unroll
      for (int m = 0; m < MT; ++m) mma16816(acc[m][nt], a[m][kk], b0, b1);
    }
  }
}

// out[m][HEAD_DIM / 8][4] += X_m S for the warp's MT row tiles m: X_m (16 x BLOCK_N) given as
// accumulator tiles x[m][BLOCK_N / 8][4] (two n8 tiles make one A fragment after rounding to
// the element type), S the [BLOCK_N, HEAD_DIM] tile in shared memory. The B fragment (k = row
// of S, n = d) takes two rows of one column: ldmatrix.trans fetches those of two n8 tiles of d
// at once.
template <int MT>
__device__ __forceinline__ void mma_acc_s(float (*out)[HEAD_DIM / 8][4],
                                          float (*x)[BLOCK_N / 8][4], const elem_t* sm, int lane) {
  static_assert(HEAD_DIM % 16 == 0, "ldmatrix.x4.trans covers two n8 tiles of HEAD_DIM");
#pragma unroll
  for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
    unsigned pa[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      pa[m][0] = pack2(x[m][2 * kk][0], x[m][2 * kk][1]);
      pa[m][1] = pack2(x[m][2 * kk][2], x[m][2 * kk][3]);
      pa[m][2] = pack2(x[m][2 * kk + 1][0], x[m][2 * kk + 1][1]);
      pa[m][3] = pack2(x[m][2 * kk + 1][2], x[m][2 * kk + 1][3]);
    }
    // lane l points at row kk * 16 + (l % 16) of S, column block (l / 16) of the d-tile pair
    const elem_t* r4 = sm + (kk * 16 + (lane & 15)) * SROW + (lane >> 4) * 8;
#pragma unroll
    for (int dt = 0; dt < HEAD_DIM / 8; dt += 2) {
      unsigned b[4];
      ldsm_x4_trans(b, r4 + dt * 8);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma16816(out[m][dt], pa[m], b[0], b[1]);
        mma16816(out[m][dt + 1], pa[m], b[2], b[3]);
      }
    }
  }
}

// Start copying BLOCK_N rows (layout positions pos0 .., gathered through perm) of one
// [N, HEAD_DIM] matrix into shared memory, 16 bytes per cp.async; the caller commits.
// HEAD_DIM / 8 and ``nthreads`` are compile-time constants at every call, so the index split
// is shifts and the loop unrolls.
__device__ __forceinline__ void load_tile_async(elem_t* sa, const elem_t* a, const int* prow,
                                                int pos0, int tid, int nthreads) {
  for (int i = tid; i < BLOCK_N * (HEAD_DIM / 8); i += nthreads) {
    const int row = i / (HEAD_DIM / 8), c8 = (i % (HEAD_DIM / 8)) * 8;
    cp_async16(sa + row * SROW + c8, a + (long long)token(prow, pos0 + row) * HEAD_DIM + c8);
  }
}

// The same rows of two matrices (Q and dO, or K and V) into one commit group.
__device__ __forceinline__ void load_tile2_async(elem_t* sa, elem_t* sb, const elem_t* a,
                                                 const elem_t* b, const int* prow, int pos0,
                                                 int tid, int nthreads) {
  load_tile_async(sa, a, prow, pos0, tid, nthreads);
  load_tile_async(sb, b, prow, pos0, tid, nthreads);
}

}  // namespace st
