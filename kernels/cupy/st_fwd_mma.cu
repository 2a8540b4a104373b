// st_fwd_mma.cu: block-sparse flash attention forward, float16 / bfloat16 tensor cores
// (mma.sync m16n8k16, fp32 accumulation).
//
// Grid (N / BLOCK_M, B * H); BLOCK_M / 16 warps, warp w owns query rows w*16 .. w*16+15 of the
// CTA's tile (layout positions q0 .. q0 + BLOCK_M - 1, all inside query block qb).
//
//   Q_w  <- rows of q (through perm), kept in registers as A fragments
//   m = -inf, l = 0, O = 0                                    (per row, fp32)
//   for each entry (key block kb, kind, mask) of row qb in the plan:
//     for each chunk of BLOCK_N keys of kb (DIAG: only chunks that reach the diagonal):
//       K, V chunk -> shared memory (cp.async, 16 bytes, rows gathered through perm; the next
//       chunk's copy is issued before this one is computed: two stages)
//       S = Q K^T * scale * LOG2E;  S[i, j] = -inf where the entry's mask forbids (i, j)
//       m' = max(m, rowmax S);  P = exp2(S - m');  l = l * exp2(m - m') + rowsum P
//       O = O * exp2(m - m') + P V                            (P rounded to the input dtype)
//   out = O / l  (0 for a row with no allowed key);  lse = m + log2(l)  (-inf for such a row)
//
// lse is in base-2 units of the scaled scores (what the backward kernels consume).
// Shared memory: 2 stages * 2 * BLOCK_N * (HEAD_DIM + 8) * 2 bytes (the +8 pad staggers banks;
// B fragments come through ldmatrix, .trans for V).
// Registers per thread: HEAD_DIM / 4 (Q) + HEAD_DIM / 2 (O) + BLOCK_N / 2 (S) words.
#include "st_common.cuh"

#if ST_DTYPE == 0
#error "st_fwd_mma.cu is for float16 / bfloat16; float32 uses st_scalar.cu"
#endif

#define NWARPS (BLOCK_M / 16)
#define SROW (HEAD_DIM + 8)  // padded shared-memory row, in elements
#include "st_mma_tiles.cuh"

static_assert(HEAD_DIM % 16 == 0, "HEAD_DIM must be a multiple of 16");
static_assert(BLOCK_M % 16 == 0 && LAYOUT_BLOCK % BLOCK_M == 0, "BLOCK_M must divide the block");
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
  __shared__ __align__(16) elem_t sK[2][BLOCK_N * SROW];  // two stages: load one, use one
  __shared__ __align__(16) elem_t sV[2][BLOCK_N * SROW];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y, h = bh % H;
  const int q0 = blockIdx.x * BLOCK_M;
  const int qb = q0 / LAYOUT_BLOCK, qin0 = q0 % LAYOUT_BLOCK;
  const int nb = N / LAYOUT_BLOCK;
  const int pat = head_pattern[h];
  const int* prow = perm_row(head_pattern, pattern_perm, perm, h, N);
  const long long base = (long long)bh * N * HEAD_DIM;

  // this thread's two rows, as tile offsets and in-block indices
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const int iq0 = qin0 + r0, iq1 = qin0 + r1;
  const elem_t* qrow0 = q + base + (long long)token(prow, q0 + r0) * HEAD_DIM;
  const elem_t* qrow1 = q + base + (long long)token(prow, q0 + r1) * HEAD_DIM;

  unsigned qa[HEAD_DIM / 16][4];
#pragma unroll
  for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
    const int c = kk * 16 + 2 * t;
    qa[kk][0] = *reinterpret_cast<const unsigned*>(qrow0 + c);
    qa[kk][1] = *reinterpret_cast<const unsigned*>(qrow1 + c);
    qa[kk][2] = *reinterpret_cast<const unsigned*>(qrow0 + c + 8);
    qa[kk][3] = *reinterpret_cast<const unsigned*>(qrow1 + c + 8);
  }

  float o[HEAD_DIM / 8][4];
#pragma unroll
  for (int dt = 0; dt < HEAD_DIM / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m0 = neg_inf(), m1 = neg_inf(), l0 = 0.f, l1 = 0.f;

  const int e_begin = row_ptr[pat * (nb + 1) + qb], e_end = row_ptr[pat * (nb + 1) + qb + 1];
  int e = e_begin, kc = 0, stage = 0;
  step_advance(e, kc, e_end, col_kind, qin0, false, true);
  if (e < e_end)
    load_tile2_async(sK[0], sV[0], k + base, v + base, prow, col_idx[e] * LAYOUT_BLOCK + kc, tid,
                     NWARPS * 32);
  cp_async_commit();
  while (e < e_end) {
    // prefetch the next step's K, V into the other stage while this one is computed
    int ne = e, nkc = kc;
    step_advance(ne, nkc, e_end, col_kind, qin0, false, false);
    if (ne < e_end)
      load_tile2_async(sK[stage ^ 1], sV[stage ^ 1], k + base, v + base, prow,
                       col_idx[ne] * LAYOUT_BLOCK + nkc, tid, NWARPS * 32);
    cp_async_commit();
    cp_async_wait<1>();  // this stage's group has landed (the prefetch may still fly)
    __syncthreads();
    const int kind = col_kind[e], mid = col_mask[e];
    const elem_t* tK = sK[stage];
    const elem_t* tV = sV[stage];

    // S = Q K^T: B fragment (k = d, n = key) is K[key][d] (st_mma_tiles.cuh: mma_a_bt)
    float s[BLOCK_N / 8][4];
    mma_a_bt(s, qa, tK, lane);

    // mask, scale, running max
    float mx0 = neg_inf(), mx1 = neg_inf();
#pragma unroll
    for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int jk = kc + nt * 8 + 2 * t + (i & 1);
        const int iq = (i < 2) ? iq0 : iq1;
        s[nt][i] = allowed(kind, mid, iq, jk, masks) ? s[nt][i] * scale_log2 : neg_inf();
      }
      mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
    const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
    // a row with nothing allowed so far keeps m = -inf; subtract 0 then, never (-inf) - (-inf)
    const float mu0 = (mn0 == neg_inf()) ? 0.f : mn0, mu1 = (mn1 == neg_inf()) ? 0.f : mn1;
    const float alpha0 = fast_exp2(m0 - mu0), alpha1 = fast_exp2(m1 - mu1);
    m0 = mn0;
    m1 = mn1;
    float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < BLOCK_N / 8; ++nt) {
      s[nt][0] = fast_exp2(s[nt][0] - mu0);
      s[nt][1] = fast_exp2(s[nt][1] - mu0);
      s[nt][2] = fast_exp2(s[nt][2] - mu1);
      s[nt][3] = fast_exp2(s[nt][3] - mu1);
      ls0 += s[nt][0] + s[nt][1];
      ls1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * alpha0 + ls0;  // per-thread partial sums; the quad is summed at the end
    l1 = l1 * alpha1 + ls1;
#pragma unroll
    for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
      o[dt][0] *= alpha0;
      o[dt][1] *= alpha0;
      o[dt][2] *= alpha1;
      o[dt][3] *= alpha1;
    }

    // O += P V: the S accumulators of two n8 tiles form one A fragment; the B fragment
    // (k = key, n = d) is V[key][d] (st_mma_tiles.cuh: mma_acc_s)
    mma_acc_s(o, s, tV, lane);
    __syncthreads();  // all warps are done with this stage before it is refilled
    e = ne;
    kc = nkc;
    stage ^= 1;
  }

  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int tok0 = token(prow, q0 + r0), tok1 = token(prow, q0 + r1);
  elem_t* orow0 = out + base + (long long)tok0 * HEAD_DIM;
  elem_t* orow1 = out + base + (long long)tok1 * HEAD_DIM;
#pragma unroll
  for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
    const int c = dt * 8 + 2 * t;
    *reinterpret_cast<unsigned*>(orow0 + c) = pack2(o[dt][0] * inv0, o[dt][1] * inv0);
    *reinterpret_cast<unsigned*>(orow1 + c) = pack2(o[dt][2] * inv1, o[dt][3] * inv1);
  }
  if (t == 0) {
    lse[(long long)bh * N + tok0] = l0 > 0.f ? m0 + fast_log2(l0) : neg_inf();
    lse[(long long)bh * N + tok1] = l1 > 0.f ? m1 + fast_log2(l1) : neg_inf();
  }
}
