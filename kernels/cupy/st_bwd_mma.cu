// st_bwd_mma.cu: block-sparse flash attention backward, float16 / bfloat16 tensor cores.
//
// Scores are recomputed from the saved lse (base-2 units, st_fwd_mma.cu); with
// delta_i = sum_d dO[i, d] * O[i, d] (st_bwd_delta, st_delta.cuh, launched first):
//   P = exp2(Q K^T * scale * LOG2E - lse),  0 where the mask forbids (i, j)
//   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q
//
// st_bwd_dq:  grid (N / BLOCK_M, B * H), warp w owns 16 query rows; walks the forward lists
//             (row_ptr / col_idx ...) streaming BLOCK_N keys at a time; writes dq once per row.
// st_bwd_dkv: grid (N / BLOCK_M, B * H), warp w owns 16 key rows; walks the transposed lists
//             (col_ptr / row_idx ...) streaming BLOCK_N queries at a time; writes dk, dv once.
// No atomics: every output row has exactly one writer. Both walk their lists in pipelined steps
// (st_mma_tiles.cuh): the next chunk is copied by cp.async while the current one is computed.
// Shared memory: 2 stages * 2 * BLOCK_N * (HEAD_DIM + 8) * 2 bytes; dkv adds 2 * 8 * BLOCK_N.
#include "st_common.cuh"
#include "st_prologue.cuh"
#include "st_delta.cuh"

#if ST_DTYPE == 0
#error "st_bwd_mma.cu is for float16 / bfloat16; float32 uses st_scalar.cu"
#endif

#define NWARPS (BLOCK_M / 16)
#define SROW (HEAD_DIM + 8)  // padded shared-memory row, in elements
#include "st_mma_tiles.cuh"

static_assert(HEAD_DIM % 16 == 0, "HEAD_DIM must be a multiple of 16");
static_assert(BLOCK_M % 16 == 0 && LAYOUT_BLOCK % BLOCK_M == 0, "BLOCK_M must divide the block");
static_assert(BLOCK_N % 16 == 0 && LAYOUT_BLOCK % BLOCK_N == 0, "BLOCK_N must divide the block");

using namespace st;

// Rows r0 = w*16 + g and r0 + 8 of a [rows, HEAD_DIM] matrix as A fragments (16 x HEAD_DIM).
__device__ __forceinline__ void load_a_rows(unsigned (*a)[4], const elem_t* row0,
                                            const elem_t* row1, int t) {
#pragma unroll
  for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
    const int c = kk * 16 + 2 * t;
    a[kk][0] = *reinterpret_cast<const unsigned*>(row0 + c);
    a[kk][1] = *reinterpret_cast<const unsigned*>(row1 + c);
    a[kk][2] = *reinterpret_cast<const unsigned*>(row0 + c + 8);
    a[kk][3] = *reinterpret_cast<const unsigned*>(row1 + c + 8);
  }
}

__device__ __forceinline__ void store_rows(elem_t* row0, elem_t* row1, float (*acc)[4],
                                           float mult, int t) {
#pragma unroll
  for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
    const int c = dt * 8 + 2 * t;
    *reinterpret_cast<unsigned*>(row0 + c) = pack2(acc[dt][0] * mult, acc[dt][1] * mult);
    *reinterpret_cast<unsigned*>(row1 + c) = pack2(acc[dt][2] * mult, acc[dt][3] * mult);
  }
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
st_bwd_dq(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
          const elem_t* __restrict__ v, const elem_t* __restrict__ dout,
          const float* __restrict__ lse, const float* __restrict__ delta,
          elem_t* __restrict__ dq, const int* __restrict__ head_pattern,
          const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
          const signed char* __restrict__ col_kind, const int* __restrict__ col_mask,
          const unsigned* __restrict__ masks, const int* __restrict__ perm,
          const int* __restrict__ pattern_perm, int H, int N, float scale, float scale_log2) {
  __shared__ __align__(16) elem_t sK[2][BLOCK_N * SROW];  // two stages: load one, use one
  __shared__ __align__(16) elem_t sV[2][BLOCK_N * SROW];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int* prow;
  const cta_rows ct = cta_prologue<BLOCK_M>(head_pattern, pattern_perm, perm, H, N, prow);

  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const int iq0 = ct.in0 + r0, iq1 = ct.in0 + r1;
  const int tok0 = token(prow, ct.pos0 + r0), tok1 = token(prow, ct.pos0 + r1);
  unsigned qa[HEAD_DIM / 16][4], da[HEAD_DIM / 16][4];
  load_a_rows(qa, q + ct.base + (long long)tok0 * HEAD_DIM,
              q + ct.base + (long long)tok1 * HEAD_DIM, t);
  load_a_rows(da, dout + ct.base + (long long)tok0 * HEAD_DIM,
              dout + ct.base + (long long)tok1 * HEAD_DIM, t);
  const float lse0 = lse[ct.rbase + tok0], lse1 = lse[ct.rbase + tok1];
  const float dl0 = delta[ct.rbase + tok0], dl1 = delta[ct.rbase + tok1];

  float acc[HEAD_DIM / 8][4];
#pragma unroll
  for (int dt = 0; dt < HEAD_DIM / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

  const int e_begin = row_ptr[ct.list_row()], e_end = row_ptr[ct.list_row() + 1];
  int e = e_begin, kc = 0, stage = 0;
  step_advance(e, kc, e_end, col_kind, ct.in0, false, true);
  if (e < e_end)
    load_tile2_async(sK[0], sV[0], k + ct.base, v + ct.base, prow, col_idx[e] * LAYOUT_BLOCK + kc,
                     tid, NWARPS * 32);
  cp_async_commit();
  while (e < e_end) {
    int ne = e, nkc = kc;  // prefetch the next step into the other stage
    step_advance(ne, nkc, e_end, col_kind, ct.in0, false, false);
    if (ne < e_end)
      load_tile2_async(sK[stage ^ 1], sV[stage ^ 1], k + ct.base, v + ct.base, prow,
                       col_idx[ne] * LAYOUT_BLOCK + nkc, tid, NWARPS * 32);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int kind = col_kind[e], mid = col_mask[e];

    float s[BLOCK_N / 8][4], dp[BLOCK_N / 8][4];
    mma_a_bt<1>(&s, &qa, sK[stage], lane);   // S = Q K^T
    mma_a_bt<1>(&dp, &da, sV[stage], lane);  // dP = dO V^T
    // dS, with the mask test compiled in for masked steps only (FULL entries and DIAG chunks
    // wholly below the warp's rows skip it; no row of such a step is empty, so lse is finite)
    auto ds = [&](auto flag) {
#pragma unroll
      for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool row1 = i >= 2;
          float p = fast_exp2(fmaf(s[nt][i], scale_log2, -(row1 ? lse1 : lse0)));
          if (decltype(flag)::value &&
              !allowed(kind, mid, row1 ? iq1 : iq0, kc + nt * 8 + 2 * t + (i & 1), masks))
            p = 0.f;  // after exp2: an empty row (lse = -inf) gives inf there, replaced here
          s[nt][i] = p * (dp[nt][i] - (row1 ? dl1 : dl0));  // dS
        }
      }
    };
    if (step_masked(kind, kc, ct.in0 + warp * 16, ct.in0 + warp * 16 + 15, false))
      ds(masked_t<true>());
    else
      ds(masked_t<false>());
    mma_acc_s<1>(&acc, &s, sK[stage], lane);  // dQ += dS K
    __syncthreads();  // all warps are done with this stage before it is refilled
    e = ne;
    kc = nkc;
    stage ^= 1;
  }
  store_rows(dq + ct.base + (long long)tok0 * HEAD_DIM, dq + ct.base + (long long)tok1 * HEAD_DIM,
             acc, scale, t);
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
st_bwd_dkv(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
           const elem_t* __restrict__ v, const elem_t* __restrict__ dout,
           const float* __restrict__ lse, const float* __restrict__ delta,
           elem_t* __restrict__ dk, elem_t* __restrict__ dv,
           const int* __restrict__ head_pattern, const int* __restrict__ col_ptr,
           const int* __restrict__ row_idx, const signed char* __restrict__ row_kind,
           const int* __restrict__ row_mask, const unsigned* __restrict__ masks,
           const int* __restrict__ perm, const int* __restrict__ pattern_perm, int H, int N,
           float scale, float scale_log2) {
  __shared__ __align__(16) elem_t sQ[2][BLOCK_N * SROW];  // two stages: load one, use one
  __shared__ __align__(16) elem_t sD[2][BLOCK_N * SROW];
  __shared__ float sLse[2][BLOCK_N];
  __shared__ float sDelta[2][BLOCK_N];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int* prow;
  const cta_rows ct = cta_prologue<BLOCK_M>(head_pattern, pattern_perm, perm, H, N, prow);

  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const int jk0 = ct.in0 + r0, jk1 = ct.in0 + r1;
  const int tok0 = token(prow, ct.pos0 + r0), tok1 = token(prow, ct.pos0 + r1);
  unsigned ka[HEAD_DIM / 16][4], va[HEAD_DIM / 16][4];
  load_a_rows(ka, k + ct.base + (long long)tok0 * HEAD_DIM,
              k + ct.base + (long long)tok1 * HEAD_DIM, t);
  load_a_rows(va, v + ct.base + (long long)tok0 * HEAD_DIM,
              v + ct.base + (long long)tok1 * HEAD_DIM, t);

  float dka[HEAD_DIM / 8][4], dva[HEAD_DIM / 8][4];
#pragma unroll
  for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
    dka[dt][0] = dka[dt][1] = dka[dt][2] = dka[dt][3] = 0.f;
    dva[dt][0] = dva[dt][1] = dva[dt][2] = dva[dt][3] = 0.f;
  }

  const int e_begin = col_ptr[ct.list_row()], e_end = col_ptr[ct.list_row() + 1];
  // start copying step (e, qc)'s Q, dO rows (async) and lse, delta (plain loads) into stage st
  auto issue = [&](int e_, int qc_, int st) {
    const int pos0 = row_idx[e_] * LAYOUT_BLOCK + qc_;
    load_tile2_async(sQ[st], sD[st], q + ct.base, dout + ct.base, prow, pos0, tid, NWARPS * 32);
    for (int i = tid; i < BLOCK_N; i += NWARPS * 32) {
      const long long tq = ct.rbase + token(prow, pos0 + i);
      sLse[st][i] = lse[tq];
      sDelta[st][i] = delta[tq];
    }
  };
  int e = e_begin, qc = 0, stage = 0;
  step_advance(e, qc, e_end, row_kind, ct.in0, true, true);
  if (e < e_end) issue(e, qc, 0);
  cp_async_commit();
  while (e < e_end) {
    int ne = e, nqc = qc;  // prefetch the next step into the other stage
    step_advance(ne, nqc, e_end, row_kind, ct.in0, true, false);
    if (ne < e_end) issue(ne, nqc, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int kind = row_kind[e], mid = row_mask[e];
    const float* tLse = sLse[stage];
    const float* tDelta = sDelta[stage];

    float s[BLOCK_N / 8][4], dp[BLOCK_N / 8][4];
    mma_a_bt<1>(&s, &ka, sQ[stage], lane);   // S^T = K Q^T   (rows: keys, columns: queries)
    mma_a_bt<1>(&dp, &va, sD[stage], lane);  // dP^T = V dO^T
    // P^T and dS^T, the mask test compiled in for masked steps only (as in st_bwd_dq)
    auto ds = [&](auto flag) {
#pragma unroll
      for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int c = nt * 8 + 2 * t + (i & 1);  // query within the chunk
          float p = fast_exp2(fmaf(s[nt][i], scale_log2, -tLse[c]));
          if (decltype(flag)::value && !allowed(kind, mid, qc + c, (i >= 2) ? jk1 : jk0, masks))
            p = 0.f;  // after exp2: an empty row (lse = -inf) gives inf there, replaced here
          s[nt][i] = p;                             // P^T
          dp[nt][i] = p * (dp[nt][i] - tDelta[c]);  // dS^T
        }
      }
    };
    if (step_masked(kind, qc, ct.in0 + warp * 16, ct.in0 + warp * 16 + 15, true))
      ds(masked_t<true>());
    else
      ds(masked_t<false>());
    mma_acc_s<1>(&dva, &s, sD[stage], lane);   // dV += P^T dO
    mma_acc_s<1>(&dka, &dp, sQ[stage], lane);  // dK += dS^T Q
    __syncthreads();  // all warps are done with this stage before it is refilled
    e = ne;
    qc = nqc;
    stage ^= 1;
  }
  store_rows(dk + ct.base + (long long)tok0 * HEAD_DIM, dk + ct.base + (long long)tok1 * HEAD_DIM,
             dka, scale, t);
  store_rows(dv + ct.base + (long long)tok0 * HEAD_DIM, dv + ct.base + (long long)tok1 * HEAD_DIM,
             dva, 1.f, t);
}
