// st_fwd_mma.cu: block-sparse flash attention forward, float16 / bfloat16 tensor cores
// (mma.sync m16n8k16, fp32 accumulation).
//
// Grid (N / BLOCK_M, B * H); BLOCK_M / (16 * M_TILES) warps, warp w owns M_TILES tiles of 16
// query rows, rows w*16*M_TILES .. of the CTA's tile (layout positions q0 .. q0 + BLOCK_M - 1,
// all inside query block qb). Two row tiles per warp (M_TILES = 2) halve the shared-memory
// reads per tensor-core op: each K / V fragment feeds two mma.sync.
//
//   Q_w  <- rows of q (through perm), kept in registers as A fragments
//   m = -inf, l = 0, O = 0                    (m: running max of the SCALED scores, base 2)
//   for each entry (key block kb, kind, mask) of row qb in the plan:
//     for each chunk of BLOCK_N keys of kb (DIAG: only chunks that reach the diagonal):
//       K, V chunk -> shared memory (cp.async, 16 bytes, rows gathered through perm)
//       S = Q K^T                                  (raw scores; waits for K only)
//       masked step only (PARTIAL, or DIAG reaching above the warp's first row):
//         S[i, j] = -inf where the entry's mask forbids (i, j)
//       m' = max(m, rowmax(S) * c)                 (c = scale * LOG2E > 0 keeps the order)
//       P = exp2(S * c - m')  (one FFMA + ex2);  l = l * exp2(m - m') + rowsum P
//       O = O * exp2(m - m')  (skipped when no row of the warp raised its max: factor 1)
//       O = O + P V                                (P rounded to the input dtype; waits for V)
//   out = O / l  (0 for a row with no allowed key);  lse = m + log2(l)  (-inf for such a row)
//
// lse is in base-2 units of the scaled scores (what the backward kernels consume).
// Pipeline (KV_STAGES): K and V are copied in separate cp.async groups, so S waits for K alone
// and V's copy overlaps S and the softmax. Two stages where 2 * 2 * BLOCK_N * (HEAD_DIM + 8)
// * 2 bytes fit the 48 KB of static shared memory: the next step's K and V are copied while
// this step is computed. Otherwise (BLOCK_N = 128 at HEAD_DIM 64) one stage, as in
// FlashAttention-2: V of this step is copied during S, K of the next step during P V.
// Shared memory: KV_STAGES * 2 * BLOCK_N * (HEAD_DIM + 8) * 2 bytes (the +8 pad staggers
// banks; B fragments come through ldmatrix, .trans for V).
// Registers per thread: M_TILES * (HEAD_DIM / 4 (Q) + HEAD_DIM / 2 (O) + BLOCK_N / 2 (S)) words.
#include "st_common.cuh"
#include "st_prologue.cuh"

#if ST_DTYPE == 0
#error "st_fwd_mma.cu is for float16 / bfloat16; float32 uses st_scalar.cu"
#endif

#ifndef M_TILES
#define M_TILES 1
#endif
#define NWARPS (BLOCK_M / (16 * M_TILES))
#define SROW (HEAD_DIM + 8)  // padded shared-memory row, in elements
#define ST_STATIC_SMEM 49152  // bytes of static __shared__ a kernel may declare
#define KV_STAGES ((2 * 2 * BLOCK_N * SROW * 2 <= ST_STATIC_SMEM) ? 2 : 1)
#include "st_mma_tiles.cuh"
#include "st_online_softmax.cuh"

static_assert(HEAD_DIM % 16 == 0, "HEAD_DIM must be a multiple of 16");
static_assert(BLOCK_M % (16 * M_TILES) == 0 && LAYOUT_BLOCK % BLOCK_M == 0,
              "BLOCK_M must divide the block and be a multiple of 16 * M_TILES");
static_assert(BLOCK_N % 16 == 0 && LAYOUT_BLOCK % BLOCK_N == 0, "BLOCK_N must divide the block");

using namespace st;

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
st_fwd_mma(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
           const elem_t* __restrict__ v, elem_t* __restrict__ out, float* __restrict__ lse,
           const int* __restrict__ head_pattern, const int* __restrict__ row_ptr,
           const int* __restrict__ col_idx, const signed char* __restrict__ col_kind,
           const int* __restrict__ col_mask, const unsigned* __restrict__ masks,
           const int* __restrict__ perm, const int* __restrict__ pattern_perm, int H, int N,
           float scale_log2) {
  __shared__ __align__(16) elem_t sK[KV_STAGES][BLOCK_N * SROW];
  __shared__ __align__(16) elem_t sV[KV_STAGES][BLOCK_N * SROW];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int* prow;
  const cta_rows ct = cta_prologue<BLOCK_M>(head_pattern, pattern_perm, perm, H, N, prow);
  const elem_t* kbase = k + ct.base;
  const elem_t* vbase = v + ct.base;
  // the warp's first and last query rows inside the layout block (for step_masked)
  const int wrow_lo = ct.in0 + warp * 16 * M_TILES, wrow_hi = wrow_lo + 16 * M_TILES - 1;

  // per row tile m: this thread's rows r[m][0] (g) and r[m][1] (g + 8), as tile offsets
  int r[M_TILES][2];
  unsigned qa[M_TILES][HEAD_DIM / 16][4];
  float o[M_TILES][HEAD_DIM / 8][4];
  float m_run[M_TILES][2], l_run[M_TILES][2];  // m_run: scaled (base-2) running max
#pragma unroll
  for (int m = 0; m < M_TILES; ++m) {
    r[m][0] = (warp * M_TILES + m) * 16 + g;
    r[m][1] = r[m][0] + 8;
    const elem_t* qrow0 = q + ct.base + (long long)token(prow, ct.pos0 + r[m][0]) * HEAD_DIM;
    const elem_t* qrow1 = q + ct.base + (long long)token(prow, ct.pos0 + r[m][1]) * HEAD_DIM;
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
      const int c = kk * 16 + 2 * t;
      qa[m][kk][0] = *reinterpret_cast<const unsigned*>(qrow0 + c);
      qa[m][kk][1] = *reinterpret_cast<const unsigned*>(qrow1 + c);
      qa[m][kk][2] = *reinterpret_cast<const unsigned*>(qrow0 + c + 8);
      qa[m][kk][3] = *reinterpret_cast<const unsigned*>(qrow1 + c + 8);
    }
#pragma unroll
    for (int dt = 0; dt < HEAD_DIM / 8; ++dt)
      o[m][dt][0] = o[m][dt][1] = o[m][dt][2] = o[m][dt][3] = 0.f;
    m_run[m][0] = m_run[m][1] = neg_inf();
    l_run[m][0] = l_run[m][1] = 0.f;
  }

  const int e_begin = row_ptr[ct.list_row()], e_end = row_ptr[ct.list_row() + 1];
  int e = e_begin, kc = 0, stage = 0;
  step_advance(e, kc, e_end, col_kind, ct.in0, false, true);
  // the first step's K (and, with two stages, its V) in flight; one commit group each
  int kpos = e < e_end ? col_idx[e] * LAYOUT_BLOCK + kc : 0;  // layout position of key kc
  if (e < e_end) load_tile_async(sK[0], kbase, prow, kpos, tid, NWARPS * 32);
  cp_async_commit();
#if KV_STAGES == 2
  if (e < e_end) load_tile_async(sV[0], vbase, prow, kpos, tid, NWARPS * 32);
  cp_async_commit();
#endif
  while (e < e_end) {
    int ne = e, nkc = kc;
    step_advance(ne, nkc, e_end, col_kind, ct.in0, false, false);
    const int nkpos = ne < e_end ? col_idx[ne] * LAYOUT_BLOCK + nkc : 0;
    const int kind = col_kind[e], mid = col_mask[e];
#if KV_STAGES == 2
    cp_async_wait<1>();  // this step's K has landed (its V may still fly)
    __syncthreads();     // ... for every thread; every warp is done with the other stage
    // prefetch the next step's K and V into the other stage, one group each
    if (ne < e_end) load_tile_async(sK[stage ^ 1], kbase, prow, nkpos, tid, NWARPS * 32);
    cp_async_commit();
    if (ne < e_end) load_tile_async(sV[stage ^ 1], vbase, prow, nkpos, tid, NWARPS * 32);
    cp_async_commit();
#else
    cp_async_wait<0>();  // this step's K has landed
    __syncthreads();     // ... for every thread; every warp is done with sV (previous P V)
    load_tile_async(sV[0], vbase, prow, kpos, tid, NWARPS * 32);  // overlaps S and the softmax
    cp_async_commit();
#endif

    // S = Q K^T: B fragment (k = d, n = key) is K[key][d] (st_mma_tiles.cuh: mma_a_bt)
    float s[M_TILES][BLOCK_N / 8][4];
    mma_a_bt<M_TILES>(s, qa, sK[stage], lane);

    // the mask, on masked steps only (a uniform branch per warp and step): FULL entries and
    // DIAG chunks wholly below the warp's rows skip it
    if (step_masked(kind, kc, wrow_lo, wrow_hi, false)) {
#pragma unroll
      for (int m = 0; m < M_TILES; ++m)
#pragma unroll
        for (int nt = 0; nt < BLOCK_N / 8; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int jk = kc + nt * 8 + 2 * t + (i & 1);
            if (!allowed(kind, mid, ct.in0 + r[m][i >> 1], jk, masks)) s[m][nt][i] = neg_inf();
          }
    }

#pragma unroll
    for (int m = 0; m < M_TILES; ++m) {
      // running max on the raw scores; half 0: row r[m][0], half 1: row r[m][1]
      float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
      for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[m][nt][0], s[m][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[m][nt][2], s[m][nt][3]));
      }
      float mu[2], alpha[2], ls[2] = {0.f, 0.f};
      // an unchanged max rescales by exactly 1, so that O may skip it
      const bool grew = online_max(m_run[m], mx, scale_log2, mu, alpha);
#pragma unroll
      for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          // one FFMA: the scale folded into the subtraction (-inf * c = -inf: masked -> 0)
          s[m][nt][i] = fast_exp2(fmaf(s[m][nt][i], scale_log2, -mu[i >> 1]));
          ls[i >> 1] += s[m][nt][i];
        }
      }
      // per-thread partial sums; the quad is summed at the end
      l_run[m][0] = l_run[m][0] * alpha[0] + ls[0];
      l_run[m][1] = l_run[m][1] * alpha[1] + ls[1];
      // O is rescaled only when some row of the warp's tile raised its max (a warp vote): once
      // the rows have seen their largest scores, most steps skip these HEAD_DIM / 2 multiplies
      if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
          o[m][dt][0] *= alpha[0];
          o[m][dt][1] *= alpha[0];
          o[m][dt][2] *= alpha[1];
          o[m][dt][3] *= alpha[1];
        }
      }
    }

#if KV_STAGES == 2
    cp_async_wait<2>();  // this step's V has landed (the next step's K, V may still fly)
    __syncthreads();
#else
    cp_async_wait<0>();  // this step's V has landed
    __syncthreads();     // ... for every thread; every warp is done with sK (S above)
    if (ne < e_end) load_tile_async(sK[0], kbase, prow, nkpos, tid, NWARPS * 32);  // overlaps P V
    cp_async_commit();
#endif
    // O += P V: the S accumulators of two n8 tiles form one A fragment; the B fragment
    // (k = key, n = d) is V[key][d] (st_mma_tiles.cuh: mma_acc_s)
    mma_acc_s<M_TILES>(o, s, sV[stage], lane);
    e = ne;
    kc = nkc;
    kpos = nkpos;
    stage = (stage + 1) % KV_STAGES;
  }

#pragma unroll
  for (int m = 0; m < M_TILES; ++m) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int tok = token(prow, ct.pos0 + r[m][hf]);
      const float inv = finish_row(l_run[m][hf], m_run[m][hf], t, lse + ct.rbase + tok);
      elem_t* orow = out + ct.base + (long long)tok * HEAD_DIM;
#pragma unroll
      for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
        *reinterpret_cast<unsigned*>(orow + dt * 8 + 2 * t) =
            pack2(o[m][dt][2 * hf] * inv, o[m][dt][2 * hf + 1] * inv);
      }
    }
  }
}
