// st_fwd_wgmma.cu: block-sparse flash attention forward on Hopper's warpgroup MMA (wgmma,
// sm_90a only), float16 / bfloat16 inputs, fp32 accumulation. Rests on st_wgmma.cuh /
// st_wgmma_ptx.cuh, whose reading of the PTX ISA the wgmma probe (probes/st_wgmma_probe.cu)
// confirmed on an H200; checked against dense on the GPU (memcheck / racecheck clean) and under
// the CPU emulation. Measured 3-5% slower than the best mma.sync tiles (kernels/cupy/NOTES.md),
// so it is not in the tuner's space; ask for it by config.
//
// Same contract as st_fwd_mma.cu's st_fwd_mma (arguments, out, lse in base-2 units, the empty
// row's out = 0 / lse = -inf, the plan walk with DIAG chunk skipping, rows gathered through
// perm), so the backend launches both alike and the backward (st_bwd_mma.cu) consumes its lse.
//
// Grid (N / BLOCK_M, B * H); BLOCK_M / 64 warpgroups (128 threads, 4 warps each) per BLOCK_M
// = 64 or 128 query rows, warpgroup v computing rows 64v .. 64v + 63 and warp w owning rows
// 16w .. 16w + 15 of the tile; the warpgroups share each step's K and V tiles (two of them
// halve the K / V copies and barriers per query row); BLOCK_N = 64 keys per step; HEAD_DIM 64.
//
//   Q (BLOCK_M x 64) -> shared memory once (cp.async, st_wgmma.cuh's core-matrix layout)
//   m = -inf, l = 0, O = 0                   (m: running max of the SCALED scores, base 2)
//   for each step (entry of row qb in the plan, chunk of 64 keys; DIAG: chunks that reach
//   the diagonal), K and V of the next step copied into the other stage meanwhile:
//     S = Q K^T            SS wgmma, 4 k-steps of d, Q and K both K-major; wait
//     masked step only:    S[i, j] = -inf where the entry forbids (i, j)
//     m' = max(m, rowmax(S) * c);  P = exp2(S * c - m');  l = l * exp2(m - m') + rowsum P
//     O = O * exp2(m - m')  in registers (skipped when no row of the warp raised its max)
//     O += P V             RS wgmma: P (rounded to the input dtype) from registers, the S
//                          fragment repacked as A fragments; V MN-major; 4 k-steps of keys; wait
//   out = O / l  (0 for a row with no allowed key);  lse = m + log2(l)  (-inf for such a row)
//
// Fragments (st_wgmma_ptx.cuh): the m64n64 accumulator d[32] of a thread holds rows
// 16w + g and 16w + g + 8 (g = lane / 4), columns 8 (i >> 2) + 2t + (i & 1) (t = lane % 4):
// mma.sync's C fragment of n8 tile i >> 2, so a row's 64 columns lie in the 4 threads of a quad
// and quad shuffles reduce it, as in st_fwd_mma.cu. S's d[8j .. 8j + 7] pack pairwise into the
// A fragment of P for k-step j (FlashAttention-3's conversion).
// Pipeline: two stages of K and V; K and V in separate cp.async groups (S waits for K alone).
// cp.async writes are generic-proxy, wgmma reads async-proxy: fence.proxy.async, then the
// barrier, before a wgmma reads a tile. Each wgmma batch is waited for (wait_group 0) before
// its accumulator is read or rescaled, and before the barrier after which the stage it read is
// refilled. No overlap of one step's P V with the next step's S (FlashAttention-3's
// intra-warpgroup pipelining: an implementation of it gave wrong results at N >= 16384 on the
// GPU and no speed-up, NOTES.md), no swizzle, no TMA.
// Shared memory: Q 8 / 16 KB + 2 stages x (K 8 KB + V 8 KB) = 40 / 48 KB static.
// Registers per thread: S 32 + O 32 + P 16 fragment words (ptxas: 113-128,
// tests/kernels/test_cupy_compile.py).
#include "st_common.cuh"
#include "st_prologue.cuh"
#include "st_wgmma.cuh"

#if ST_DTYPE == 0
#error "st_fwd_wgmma.cu is for float16 / bfloat16; float32 uses st_scalar.cu"
#endif

#define WG_THREADS (BLOCK_M / 64 * 128)  // a warpgroup per 64 query rows
// the plan walk (step_advance, step_masked) of the mma.sync kernels, on BLOCK_M x BLOCK_N steps
#include "st_plan_walk.cuh"
#include "st_online_softmax.cuh"

static_assert(HEAD_DIM == 64, "st_fwd_wgmma.cu: HEAD_DIM 64 only (the m64n64 S and O products)");
static_assert((BLOCK_M == 64 || BLOCK_M == 128) && BLOCK_N == 64,
              "st_fwd_wgmma.cu: 64 or 128 query rows (a warpgroup per 64), 64 keys a step");
static_assert(LAYOUT_BLOCK % BLOCK_M == 0, "st_fwd_wgmma.cu: BLOCK_M must divide the layout block");

#define WG_TILE (64 * HEAD_DIM)  // elements of one 64-row tile

using namespace st;

namespace {

// ROWS rows (layout positions pos0 ..) of a [N, HEAD_DIM] matrix -> a tile, one cp.async per
// 16 bytes; the caller commits
template <int ROWS>
__device__ __forceinline__ void load_rows(elem_t* dst, const elem_t* src, const int* prow,
                                          int pos0, int tid) {
  wg_load_tile_async<ROWS>(
      dst, src, [&](int r) { return (long long)token(prow, pos0 + r) * HEAD_DIM; }, tid,
      WG_THREADS);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(WG_THREADS)
st_fwd_wgmma(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
             const elem_t* __restrict__ v, elem_t* __restrict__ out, float* __restrict__ lse,
             const int* __restrict__ head_pattern, const int* __restrict__ row_ptr,
             const int* __restrict__ col_idx, const signed char* __restrict__ col_kind,
             const int* __restrict__ col_mask, const unsigned* __restrict__ masks,
             const int* __restrict__ perm, const int* __restrict__ pattern_perm, int H, int N,
             float scale_log2) {
  // 128-byte aligned: descriptors address 16-byte units, core matrices are 128 bytes
  __shared__ __align__(128) elem_t sQ[BLOCK_M / 64 * WG_TILE];
  __shared__ __align__(128) elem_t sK[2][WG_TILE];
  __shared__ __align__(128) elem_t sV[2][WG_TILE];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgroup = tid >> 7;
  const int g = lane >> 2, t = lane & 3;
  const int* prow;
  const cta_rows ct = cta_prologue<BLOCK_M>(head_pattern, pattern_perm, perm, H, N, prow);
  const elem_t* kbase = k + ct.base;
  const elem_t* vbase = v + ct.base;
  // the warp's first and last query rows inside the layout block (for step_masked)
  const int wrow_lo = ct.in0 + warp * 16, wrow_hi = wrow_lo + 15;
  // this thread's two rows of the tile (accumulator halves hf = (i >> 1) & 1)
  const int r[2] = {warp * 16 + g, warp * 16 + g + 8};

  float o[32];  // O accumulator (D fragment)
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = 0.f;
  float m_run[2] = {neg_inf(), neg_inf()}, l_run[2] = {0.f, 0.f};

  const int e_begin = row_ptr[ct.list_row()], e_end = row_ptr[ct.list_row() + 1];
  int e = e_begin, kc = 0, stage = 0;
  step_advance(e, kc, e_end, col_kind, ct.in0, false, true);
  // Q and the first step's K in one commit group, its V in the next
  const int kpos = e < e_end ? col_idx[e] * LAYOUT_BLOCK + kc : 0;  // position of key kc
  if (e < e_end) {
    load_rows<BLOCK_M>(sQ, q + ct.base, prow, ct.pos0, tid);
    load_rows<64>(sK[0], kbase, prow, kpos, tid);
  }
  cp_async_commit();
  if (e < e_end) load_rows<64>(sV[0], vbase, prow, kpos, tid);
  cp_async_commit();

  while (e < e_end) {
    int ne = e, nkc = kc;
    step_advance(ne, nkc, e_end, col_kind, ct.in0, false, false);
    const int nkpos = ne < e_end ? col_idx[ne] * LAYOUT_BLOCK + nkc : 0;
    const int kind = col_kind[e], mid = col_mask[e];
    cp_async_wait<1>();   // this step's K (and Q) has landed (its V may still fly)
    fence_proxy_async();  // ... visible to wgmma
    __syncthreads();      // ... for every thread; every wgmma of the previous step has completed
    // prefetch the next step's K and V into the other stage, one group each
    if (ne < e_end) load_rows<64>(sK[stage ^ 1], kbase, prow, nkpos, tid);
    cp_async_commit();
    if (ne < e_end) load_rows<64>(sV[stage ^ 1], vbase, prow, nkpos, tid);
    cp_async_commit();

    // S = Q K^T (raw scores) for this warpgroup's 64 rows (its Q rows start 8 row groups
    // further per warpgroup), both operands K-major, the first k-step overwrites S
    float s[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) s[i] = 0.f;
    wg_run(s, [&] {
#pragma unroll
      for (int j = 0; j < HEAD_DIM / 16; ++j)
        wg_mma_ss<0, 0>(s, wg_desc(wg_kmajor_step(sQ + wgroup * WG_TILE, j), WG_KMAJOR_LBO,
                                   WG_KMAJOR_SBO),
                        wg_desc(wg_kmajor_step(sK[stage], j), WG_KMAJOR_LBO, WG_KMAJOR_SBO),
                        j > 0);
    });

    // the mask, on masked steps only (uniform per warp and step)
    if (step_masked(kind, kc, wrow_lo, wrow_hi, false)) {
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int jk = kc + 8 * (i >> 2) + 2 * t + (i & 1);
        if (!allowed(kind, mid, ct.in0 + r[(i >> 1) & 1], jk, masks)) s[i] = neg_inf();
      }
    }

    // online softmax on the raw scores; half hf: row r[hf]
    float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[4 * nt], s[4 * nt + 1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
    }
    float mu[2], alpha[2], ls[2] = {0.f, 0.f};
    const bool grew = online_max(m_run, mx, scale_log2, mu, alpha);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      s[i] = fast_exp2(fmaf(s[i], scale_log2, -mu[(i >> 1) & 1]));  // -inf -> 0
      ls[(i >> 1) & 1] += s[i];
    }
    l_run[0] = l_run[0] * alpha[0] + ls[0];  // per-thread partial sums, the quad's at the end
    l_run[1] = l_run[1] * alpha[1] + ls[1];
    // P: S's fragment of key columns 16j .. 16j + 15 is the A fragment of k-step j
    unsigned pa[BLOCK_N / 16][4];
#pragma unroll
    for (int j = 0; j < BLOCK_N / 16; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x) pa[j][x] = pack2(s[8 * j + 2 * x], s[8 * j + 2 * x + 1]);
    // O, no wgmma in flight on it, is rescaled in registers (skipped when no row of the warp
    // raised its max: the factor is exactly 1 then)
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int i = 0; i < 32; ++i) o[i] *= alpha[(i >> 1) & 1];
    }

    cp_async_wait<2>();   // this step's V has landed (the next step's K, V may still fly)
    fence_proxy_async();
    __syncthreads();
    // O += P V: V MN-major (d contiguous), k-step j = keys 16j .. 16j + 15 (wg_run's fence
    // orders the rescale of O and the writes of P before the wgmma reads them)
    wg_run(o, [&] {
#pragma unroll
      for (int j = 0; j < BLOCK_N / 16; ++j)
        wg_mma_rs<1>(o, pa[j], wg_desc(wg_mnmajor_step(sV[stage], j), WG_MNMAJOR_LBO,
                                       WG_MNMAJOR_SBO), 1);
    });
    e = ne;
    kc = nkc;
    stage ^= 1;
  }
  cp_async_wait<0>();  // no copy outlives the kernel (an empty row list committed empty groups)

#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int tok = token(prow, ct.pos0 + r[hf]);
    const float inv = finish_row(l_run[hf], m_run[hf], t, lse + ct.rbase + tok);
    elem_t* orow = out + ct.base + (long long)tok * HEAD_DIM;
#pragma unroll
    for (int nt = 0; nt < HEAD_DIM / 8; ++nt)
      *reinterpret_cast<unsigned*>(orow + nt * 8 + 2 * t) =
          pack2(o[4 * nt + 2 * hf] * inv, o[4 * nt + 2 * hf + 1] * inv);
  }
}
