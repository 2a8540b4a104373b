// st_mma_tiles.cuh: warp-level tile products of the tensor-core kernels (st_fwd_mma.cu,
// st_bwd_mma.cu). Needs HEAD_DIM, BLOCK_N and SROW (padded shared-memory row, in elements) and
// ST_DTYPE 1 or 2. One warp computes 16 rows; g = lane / 4, t = lane % 4 as in mma16816.
#pragma once

namespace st {

// acc[BLOCK_N / 8][4] = A S^T: A (16 x HEAD_DIM) given as A fragments a[HEAD_DIM / 16][4], S the
// [BLOCK_N, HEAD_DIM] tile in shared memory. The B fragment (k = d, n = row of S) is two
// consecutive d of one row of S: ldmatrix (no transpose) fetches those of two k-steps at once.
__device__ __forceinline__ void mma_a_bt(float (*acc)[4], const unsigned (*a)[4],
                                         const elem_t* sm, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    // lane l points at row (l % 8) of the n-tile, column block (l / 8) * 8 of the k-step pair
    const elem_t* r4 = sm + (nt * 8 + (lane & 7)) * SROW + (lane >> 3) * 8;
#pragma unroll
    for (int kk = 0; kk + 1 < HEAD_DIM / 16; kk += 2) {
      unsigned b[4];
      ldsm_x4(b, r4 + kk * 16);
      mma16816(acc[nt], a[kk], b[0], b[1]);
      mma16816(acc[nt], a[kk + 1], b[2], b[3]);
    }
    if ((HEAD_DIM / 16) % 2) {  // an odd last k-step: two 32-bit loads
      const int kk = HEAD_DIM / 16 - 1;
      const elem_t* r = sm + (nt * 8 + g) * SROW + kk * 16 + 2 * t;
      mma16816(acc[nt], a[kk], *reinterpret_cast<const unsigned*>(r),
               *reinterpret_cast<const unsigned*>(r + 8));
    }
  }
}

// out[HEAD_DIM / 8][4] += X S: X (16 x BLOCK_N) given as accumulator tiles x[BLOCK_N / 8][4]
// (two n8 tiles make one A fragment after rounding to the element type), S the
// [BLOCK_N, HEAD_DIM] tile in shared memory. The B fragment (k = row of S, n = d) takes two rows
// of one column: ldmatrix.trans fetches those of two n8 tiles of d at once.
__device__ __forceinline__ void mma_acc_s(float (*out)[4], float (*x)[4], const elem_t* sm,
                                          int lane) {
  static_assert(HEAD_DIM % 16 == 0, "ldmatrix.x4.trans covers two n8 tiles of HEAD_DIM");
#pragma unroll
  for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
    unsigned pa[4];
    pa[0] = pack2(x[2 * kk][0], x[2 * kk][1]);
    pa[1] = pack2(x[2 * kk][2], x[2 * kk][3]);
    pa[2] = pack2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    pa[3] = pack2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
    // lane l points at row kk * 16 + (l % 16) of S, column block (l / 16) of the d-tile pair
    const elem_t* r4 = sm + (kk * 16 + (lane & 15)) * SROW + (lane >> 4) * 8;
#pragma unroll
    for (int dt = 0; dt < HEAD_DIM / 8; dt += 2) {
      unsigned b[4];
      ldsm_x4_trans(b, r4 + dt * 8);
      mma16816(out[dt], pa, b[0], b[1]);
      mma16816(out[dt + 1], pa, b[2], b[3]);
    }
  }
}

}  // namespace st
