// st_wgmma.cuh: shared-memory tiles for the Hopper warpgroup MMA (wgmma), no swizzle.
//
// One layout for every tile (Q, K and V alike): a ROWS x HEAD_DIM tile of 16-bit elements,
// rows being tokens, stored as 8 x 8 "core matrices" (8 rows x 16 bytes, 128 contiguous bytes,
// row r % 8 at byte 16 (r % 8)), core matrix (row group r / 8, column chunk c = d / 8) at byte
//     (r / 8) * RG + c * 128,   RG = 16 * HEAD_DIM (the bytes of 8 whole rows).
// Each 16-byte piece of a row (8 elements) is one cp.async, so rows gathered through the
// permutation fill it directly. How wgmma reads it (this file's reading of the PTX ISA's
// canonical no-swizzle layouts, in 16-bit elements, T = 8 elements = 16 bytes):
//   K-major operand (Q as A, K as B of S = Q K^T: the contraction index d is contiguous)
//     ((8, m), (T, 2)) : ((T, SBO), (1, LBO)): element (mn, k) at
//     (mn / 8) SBO + (k / 8) LBO + 16 (mn % 8) + 2 (k % 8) bytes
//     -> LBO = 128 (the next 8 of d), SBO = RG (the next 8 rows); k-step s (d 16s..16s+15)
//        starts 256 s bytes in.
//   MN-major operand (V as B of O = P V: the output index d is contiguous; imm-trans-b = 1)
//     ((T, m), (8, k)) : ((1, SBO), (T, LBO)): element (mn, k) at
//     (mn / 8) SBO + (k / 8) LBO + 16 (k % 8) + 2 (mn % 8) bytes
//     -> SBO = 128 (the next 8 of d), LBO = RG (the next 8 keys); k-step s (keys 16s..16s+15)
//        starts 2 RG s bytes in.
// No swizzle means bank conflicts in the tensor core's reads (the probe does not measure
// speed); a 128-byte swizzle would remove them (not implemented).
#pragma once

#include "st_wgmma_ptx.cuh"

namespace st {

#define WG_CORE_BYTES 128                 // one 8 x 8 core matrix of 16-bit elements
#define WG_RG_BYTES (16 * HEAD_DIM)       // 8 rows of HEAD_DIM 16-bit elements
#define WG_KMAJOR_LBO WG_CORE_BYTES       // K-major: next 8 along k (d)
#define WG_KMAJOR_SBO WG_RG_BYTES         // K-major: next 8 rows
#define WG_MNMAJOR_LBO WG_RG_BYTES        // MN-major: next 8 along k (keys)
#define WG_MNMAJOR_SBO WG_CORE_BYTES      // MN-major: next 8 along n (d)

// element offset of (row, 8-element chunk c) in the tile layout above
__device__ __forceinline__ int wg_tile_offset(int row, int c) {
  return (row >> 3) * (8 * HEAD_DIM) + c * 64 + (row & 7) * 8;
}

// ROWS rows of ``src`` (row i at src + row_off(i) elements) -> tile ``dst``, 16 bytes per
// cp.async, threads tid..nthreads; the caller commits and waits. Piece i is row
// 8 (i / (8 CPR)) + i % 8, chunk (i / 8) % CPR: the 8 threads of a core matrix write its 128
// contiguous bytes, so a warp's 32 pieces fill 4 whole core matrices (no bank conflict; row-
// major order, 8 chunks of one row per 8 threads, would put them all on the same 4 banks), and
// each row's 4 pieces of a warp are 64 contiguous bytes of global memory (2 full sectors).
template <int ROWS, typename RowOff>
__device__ __forceinline__ void wg_load_tile_async(elem_t* dst, const elem_t* src,
                                                   RowOff row_off, int tid, int nthreads) {
  constexpr int CPR = HEAD_DIM / 8;  // 16-byte chunks per row
  for (int i = tid; i < ROWS * CPR; i += nthreads) {
    const int row = (i / (8 * CPR)) * 8 + (i & 7), c = (i >> 3) % CPR;
    cp_async16(dst + wg_tile_offset(row, c), src + row_off(row) + c * 8);
  }
}

// the shared-memory address of k-step ``s`` of a tile, for each major-ness
__device__ __forceinline__ const elem_t* wg_kmajor_step(const elem_t* tile, int s) {
  return tile + s * 128;  // 256 bytes: two core matrices along d
}
__device__ __forceinline__ const elem_t* wg_mnmajor_step(const elem_t* tile, int s) {
  return tile + s * 16 * HEAD_DIM;  // 2 RG bytes: two row groups of 8 keys
}

// Keeps the compiler from moving reads or writes of a 32-register m64n64 accumulator across
// the wgmma that owns it (st_wgmma_ptx.cuh: wg_fence_operand).
__device__ __forceinline__ void wg_fence_acc(float* acc) {
#pragma unroll
  for (int i = 0; i < 32; ++i) wg_fence_operand(acc[i]);
}

// One batch of wgmma on accumulator ``acc``: wgmma.fence (which also orders registers the
// batch reads, A fragments or acc, written by ordinary instructions before it), ``issue()``
// (the wgmma of every k-step), commit, and wait until the batch has completed, so acc may be
// read and the shared-memory tiles it read refilled afterwards.
template <typename Issue>
__device__ __forceinline__ void wg_run(float* acc, Issue issue) {
  wg_fence_acc(acc);
  wg_fence();
  issue();
  wg_commit();
  wg_wait<0>();
  wg_fence_acc(acc);
}

}  // namespace st
