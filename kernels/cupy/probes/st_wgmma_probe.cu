// st_wgmma_probe.cu: single-warpgroup kernels that check this project's reading of wgmma
// (sm_90a) against torch, one 64 x 64 x 64 product each: the operand layouts the wgmma
// attention forward needs. Run by tests/kernels/test_cupy_backend.py (GPU) and
// tests/kernels/test_cupy_emulated.py (CPU emulation of the same source).
//
// Compiled with ST_DTYPE = 2 (bf16) or 1 (fp16), HEAD_DIM = 64, LAYOUT_BLOCK = 64; launched as
// one CTA of 128 threads (one warpgroup). Every operand is a row-major 64 x 64 tile in global
// memory, copied with 16-byte cp.async into the core-matrix layout of st_wgmma.cuh:
//   byte (r / 8) * 1024 + (c / 8) * 128 + (r % 8) * 16 + (c % 8) * 2   for element (r, c).
// The descriptors' LBO / SBO are kernel arguments, so the script can try this file's reading
// (st_wgmma.cuh: K-major LBO 128, SBO 1024; MN-major LBO 1024, SBO 128) and the swapped pair
// from one build. Each tile gets a 16 KB array (twice its 8 KB), so the swapped pair's reads
// stay inside it too: no out-of-range shared access, whichever reading is wrong.
//
//   wg_probe_ss_k : D = A B^T, A (m x k) and B (n x k) K-major from shared memory (S = Q K^T)
//   wg_probe_ss_mn: D = A B,   A K-major, B (k x n) MN-major, imm-trans-b = 1     (A V)
//   wg_probe_rs_mn: D = A B,   A from registers (loaded as fragments from global), B as above
//   wg_probe_chain: S = A B^T as wg_probe_ss_k, then O = bf16(S) C with the S accumulators
//                   repacked into A fragments in registers (FlashAttention-3's P V), C MN-major;
//                   writes S to d and O to d2
// d, d2: float32 64 x 64 row-major, written from the accumulator fragment layout.
#include "st_common.cuh"
#include "st_wgmma.cuh"

static_assert(HEAD_DIM == 64, "the probe's tiles are 64 x 64");

using namespace st;

#define WG_THREADS 128
#define WG_TILE (64 * HEAD_DIM)
#define WG_ARRAY (2 * WG_TILE)  // room for the swapped descriptors' reach (13.3 KB at most)

namespace {

__device__ __forceinline__ void fill_tile(elem_t* s, const elem_t* g) {
  wg_load_tile_async<64>(s, g, [](int r) { return r * HEAD_DIM; }, threadIdx.x, WG_THREADS);
}

// every thread's copies have landed and are visible to wgmma (the async proxy)
__device__ __forceinline__ void tiles_ready() {
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
}

__device__ __forceinline__ void zero(float* acc) {
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
}

// D fragment -> row-major float 64 x 64 (st_wgmma_ptx.cuh: D layout)
__device__ __forceinline__ void store_d(float* out, const float* acc) {
  const int tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int row = 16 * w + g + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * t + (i & 1);
    out[row * 64 + col] = acc[i];
  }
}

// one batch of wgmma into a fresh accumulator
template <typename Issue>
__device__ __forceinline__ void wg_batch(float* acc, Issue issue) {
  zero(acc);
  wg_run(acc, issue);
}

// S = A B^T over the four k-steps of d (both K-major)
__device__ __forceinline__ void ss_k(float* acc, const elem_t* sA, const elem_t* sB, int lbo_a,
                                     int sbo_a, int lbo_b, int sbo_b) {
  wg_batch(acc, [&] {
#pragma unroll
    for (int s = 0; s < HEAD_DIM / 16; ++s)
      wg_mma_ss<0, 0>(acc, wg_desc(wg_kmajor_step(sA, s), lbo_a, sbo_a),
                      wg_desc(wg_kmajor_step(sB, s), lbo_b, sbo_b), s > 0);  // scale-d 0 first
  });
}

}  // namespace

extern "C" __global__ void __launch_bounds__(WG_THREADS)
wg_probe_ss_k(const elem_t* a, const elem_t* b, const elem_t* c, float* d, float* d2,
              int lbo_a, int sbo_a, int lbo_b, int sbo_b) {
  __shared__ __align__(128) elem_t sA[WG_ARRAY];
  __shared__ __align__(128) elem_t sB[WG_ARRAY];
  fill_tile(sA, a);
  fill_tile(sB, b);
  tiles_ready();
  float acc[32];
  ss_k(acc, sA, sB, lbo_a, sbo_a, lbo_b, sbo_b);
  store_d(d, acc);
}

extern "C" __global__ void __launch_bounds__(WG_THREADS)
wg_probe_ss_mn(const elem_t* a, const elem_t* b, const elem_t* c, float* d, float* d2,
               int lbo_a, int sbo_a, int lbo_b, int sbo_b) {
  __shared__ __align__(128) elem_t sA[WG_ARRAY];
  __shared__ __align__(128) elem_t sB[WG_ARRAY];
  fill_tile(sA, a);
  fill_tile(sB, b);
  tiles_ready();
  float acc[32];
  wg_batch(acc, [&] {
#pragma unroll
    for (int s = 0; s < 4; ++s)
      wg_mma_ss<0, 1>(acc, wg_desc(wg_kmajor_step(sA, s), lbo_a, sbo_a),
                      wg_desc(wg_mnmajor_step(sB, s), lbo_b, sbo_b), 1);
  });
  store_d(d, acc);
}

extern "C" __global__ void __launch_bounds__(WG_THREADS)
wg_probe_rs_mn(const elem_t* a, const elem_t* b, const elem_t* c, float* d, float* d2,
               int lbo_a, int sbo_a, int lbo_b, int sbo_b) {
  __shared__ __align__(128) elem_t sB[WG_ARRAY];
  fill_tile(sB, b);
  tiles_ready();
  const int tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
  // A fragments straight from global (st_wgmma_ptx.cuh: A in registers)
  unsigned fa[4][4];
  const elem_t* row0 = a + (16 * w + g) * 64;
  const elem_t* row1 = row0 + 8 * 64;
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const int col = 16 * s + 2 * t;
    fa[s][0] = *reinterpret_cast<const unsigned*>(row0 + col);
    fa[s][1] = *reinterpret_cast<const unsigned*>(row1 + col);
    fa[s][2] = *reinterpret_cast<const unsigned*>(row0 + col + 8);
    fa[s][3] = *reinterpret_cast<const unsigned*>(row1 + col + 8);
  }
  float acc[32];
  wg_batch(acc, [&] {
#pragma unroll
    for (int s = 0; s < 4; ++s)
      wg_mma_rs<1>(acc, fa[s], wg_desc(wg_mnmajor_step(sB, s), lbo_b, sbo_b), 1);
  });
  store_d(d, acc);
}

// lbo_a / sbo_a, lbo_b / sbo_b: the K-major pair (A and B of S); the MN-major pair of C is
// (sbo_b, lbo_b) swapped back, i.e. this file's reading uses (1024, 128) for C
extern "C" __global__ void __launch_bounds__(WG_THREADS)
wg_probe_chain(const elem_t* a, const elem_t* b, const elem_t* c, float* d, float* d2,
               int lbo_a, int sbo_a, int lbo_b, int sbo_b) {
  __shared__ __align__(128) elem_t sA[WG_ARRAY];
  __shared__ __align__(128) elem_t sB[WG_ARRAY];
  __shared__ __align__(128) elem_t sC[WG_ARRAY];
  fill_tile(sA, a);
  fill_tile(sB, b);
  fill_tile(sC, c);
  tiles_ready();
  float sacc[32];
  ss_k(sacc, sA, sB, lbo_a, sbo_a, lbo_b, sbo_b);
  store_d(d, sacc);
  // S accumulators of key columns 16j..16j+15 -> the A fragment of k-step j
  unsigned pa[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) pa[j][r] = pack2(sacc[8 * j + 2 * r], sacc[8 * j + 2 * r + 1]);
  float acc[32];
  wg_batch(acc, [&] {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      wg_mma_rs<1>(acc, pa[j], wg_desc(wg_mnmajor_step(sC, j), sbo_b, lbo_b), j > 0);
  });
  store_d(d2, acc);
}
