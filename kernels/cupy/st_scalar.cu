// st_scalar.cu: block-sparse attention with plain fp32 FMA, any element type (float32,
// float16, bfloat16), any HEAD_DIM up to 128. The float32 path and the fallback that checks the
// tensor-core kernels: simple enough to be checked by reading.
//
// One warp per owned row (query for forward / dQ, key for dK / dV), SC_ROWS warps per CTA
// (SC_ROWS rows of one layout block). Streamed rows come SC_CHUNK = min(32, b) at a time into
// shared memory as fp32; lane j takes streamed row j for the dot products (scores), lane d takes
// columns d, d + 32, ... for the accumulations. Same math and lse convention (base 2) as the
// tensor-core kernels:
//   forward: online softmax, out = O / l (0 for an empty row), lse = m + log2(l) (-inf if empty)
//   dQ  = scale * sum_j P_ij (dP_ij - delta_i) k_j,    dP_ij = dO_i . v_j
//   dK  = scale * sum_i P_ij (dP_ij - delta_i) q_i,    dV = sum_i P_ij dO_i
// Grid (N / SC_ROWS, B * H), block SC_ROWS * 32 threads.
// Shared memory: 4 * (2 * SC_CHUNK * (HEAD_DIM + 1) + 2 * SC_ROWS * HEAD_DIM + 2 * SC_CHUNK).
#include "st_common.cuh"
#include "st_prologue.cuh"
#include "st_delta.cuh"

#define SC_ROWS 8
#define SC_CHUNK (LAYOUT_BLOCK < 32 ? LAYOUT_BLOCK : 32)
#define SC_PER_LANE ((HEAD_DIM + 31) / 32)
#define SC_SROW (HEAD_DIM + 1)  // odd stride: lane j reading row j hits distinct banks

static_assert(HEAD_DIM <= 128, "the scalar kernels keep 2 fp32 chunks of HEAD_DIM in 48 KB of smem");
static_assert(LAYOUT_BLOCK % SC_ROWS == 0, "SC_ROWS must divide the block");

using namespace st;

// rows pos0 .. pos0 + SC_CHUNK - 1 (through perm) of two [N, HEAD_DIM] matrices -> fp32 smem
__device__ __forceinline__ void sc_load_chunk(float* sa, float* sb, const elem_t* a,
                                              const elem_t* b, const int* prow, int pos0) {
  for (int i = threadIdx.x; i < SC_CHUNK * HEAD_DIM; i += SC_ROWS * 32) {
    const int row = i / HEAD_DIM, c = i % HEAD_DIM;
    const long long src = (long long)token(prow, pos0 + row) * HEAD_DIM + c;
    sa[row * SC_SROW + c] = to_float(a[src]);
    sb[row * SC_SROW + c] = to_float(b[src]);
  }
}

// dot of an fp32 row in smem (stride 1) with streamed row ``j`` of a chunk
__device__ __forceinline__ float sc_dot(const float* x, const float* chunk, int j) {
  float s = 0.f;
#pragma unroll 8
  for (int d = 0; d < HEAD_DIM; ++d) s = fmaf(x[d], chunk[j * SC_SROW + d], s);
  return s;
}

extern "C" __global__ void __launch_bounds__(SC_ROWS * 32)
st_fwd_scalar(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
              const elem_t* __restrict__ v, elem_t* __restrict__ out, float* __restrict__ lse,
              const int* __restrict__ head_pattern, const int* __restrict__ row_ptr,
              const int* __restrict__ col_idx, const signed char* __restrict__ col_kind,
              const int* __restrict__ col_mask, const unsigned* __restrict__ masks,
              const int* __restrict__ perm, const int* __restrict__ pattern_perm, int H, int N,
              float scale_log2) {
  __shared__ float sK[SC_CHUNK * SC_SROW];
  __shared__ float sV[SC_CHUNK * SC_SROW];
  __shared__ float sQ[SC_ROWS * HEAD_DIM];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int* prow;
  const cta_rows ct = cta_prologue<SC_ROWS>(head_pattern, pattern_perm, perm, H, N, prow, warp);
  const int pos = ct.pos0, iq = ct.in0;  // this warp's query, layout order
  const int tok = token(prow, pos);
  const int tile_last = (blockIdx.x * SC_ROWS) % LAYOUT_BLOCK + SC_ROWS - 1;

  for (int d = lane; d < HEAD_DIM; d += 32)
    sQ[warp * HEAD_DIM + d] = to_float(q[ct.base + (long long)tok * HEAD_DIM + d]);

  float o[SC_PER_LANE];
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) o[i] = 0.f;
  float m = neg_inf(), l = 0.f;

  const int e_begin = row_ptr[ct.list_row()], e_end = row_ptr[ct.list_row() + 1];
  for (int e = e_begin; e < e_end; ++e) {
    const int kb = col_idx[e], kind = col_kind[e], mid = col_mask[e];
    for (int kc = 0; kc < LAYOUT_BLOCK; kc += SC_CHUNK) {
      if (kind == ST_KIND_DIAG && kc > tile_last) break;
      __syncthreads();
      sc_load_chunk(sK, sV, k + ct.base, v + ct.base, prow, kb * LAYOUT_BLOCK + kc);
      __syncthreads();
      float x = neg_inf();
      if (lane < SC_CHUNK && allowed(kind, mid, iq, kc + lane, masks))
        x = sc_dot(sQ + warp * HEAD_DIM, sK, lane) * scale_log2;
      const float mn = fmaxf(m, warp_max(x));
      const float mu = (mn == neg_inf()) ? 0.f : mn;
      const float alpha = fast_exp2(m - mu);
      const float p = fast_exp2(x - mu);
      m = mn;
      l = l * alpha + warp_sum(p);
#pragma unroll
      for (int i = 0; i < SC_PER_LANE; ++i) o[i] *= alpha;
      for (int j = 0; j < SC_CHUNK; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int i = 0; i < SC_PER_LANE; ++i) {
          const int d = lane + 32 * i;
          if (d < HEAD_DIM) o[i] = fmaf(pj, sV[j * SC_SROW + d], o[i]);
        }
      }
    }
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) {
    const int d = lane + 32 * i;
    if (d < HEAD_DIM) out[ct.base + (long long)tok * HEAD_DIM + d] = from_float(o[i] * inv);
  }
  if (lane == 0) lse[ct.rbase + tok] = l > 0.f ? m + fast_log2(l) : neg_inf();
}

extern "C" __global__ void __launch_bounds__(SC_ROWS * 32)
st_bwd_dq_scalar(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
                 const elem_t* __restrict__ v, const elem_t* __restrict__ dout,
                 const float* __restrict__ lse, const float* __restrict__ delta,
                 elem_t* __restrict__ dq, const int* __restrict__ head_pattern,
                 const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
                 const signed char* __restrict__ col_kind, const int* __restrict__ col_mask,
                 const unsigned* __restrict__ masks, const int* __restrict__ perm,
                 const int* __restrict__ pattern_perm, int H, int N, float scale,
                 float scale_log2) {
  __shared__ float sK[SC_CHUNK * SC_SROW];
  __shared__ float sV[SC_CHUNK * SC_SROW];
  __shared__ float sQ[SC_ROWS * HEAD_DIM];
  __shared__ float sD[SC_ROWS * HEAD_DIM];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int* prow;
  const cta_rows ct = cta_prologue<SC_ROWS>(head_pattern, pattern_perm, perm, H, N, prow, warp);
  const int pos = ct.pos0, iq = ct.in0;
  const int tok = token(prow, pos);
  const int tile_last = (blockIdx.x * SC_ROWS) % LAYOUT_BLOCK + SC_ROWS - 1;
  const float row_lse = lse[ct.rbase + tok], row_delta = delta[ct.rbase + tok];

  for (int d = lane; d < HEAD_DIM; d += 32) {
    sQ[warp * HEAD_DIM + d] = to_float(q[ct.base + (long long)tok * HEAD_DIM + d]);
    sD[warp * HEAD_DIM + d] = to_float(dout[ct.base + (long long)tok * HEAD_DIM + d]);
  }
  float acc[SC_PER_LANE];
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) acc[i] = 0.f;

  const int e_begin = row_ptr[ct.list_row()], e_end = row_ptr[ct.list_row() + 1];
  for (int e = e_begin; e < e_end; ++e) {
    const int kb = col_idx[e], kind = col_kind[e], mid = col_mask[e];
    for (int kc = 0; kc < LAYOUT_BLOCK; kc += SC_CHUNK) {
      if (kind == ST_KIND_DIAG && kc > tile_last) break;
      __syncthreads();
      sc_load_chunk(sK, sV, k + ct.base, v + ct.base, prow, kb * LAYOUT_BLOCK + kc);
      __syncthreads();
      float ds = 0.f;
      if (lane < SC_CHUNK && allowed(kind, mid, iq, kc + lane, masks)) {
        const float p = fast_exp2(sc_dot(sQ + warp * HEAD_DIM, sK, lane) * scale_log2 - row_lse);
        ds = p * (sc_dot(sD + warp * HEAD_DIM, sV, lane) - row_delta);
      }
      for (int j = 0; j < SC_CHUNK; ++j) {
        const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
        for (int i = 0; i < SC_PER_LANE; ++i) {
          const int d = lane + 32 * i;
          if (d < HEAD_DIM) acc[i] = fmaf(dsj, sK[j * SC_SROW + d], acc[i]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) {
    const int d = lane + 32 * i;
    if (d < HEAD_DIM) dq[ct.base + (long long)tok * HEAD_DIM + d] = from_float(acc[i] * scale);
  }
}

extern "C" __global__ void __launch_bounds__(SC_ROWS * 32)
st_bwd_dkv_scalar(const elem_t* __restrict__ q, const elem_t* __restrict__ k,
                  const elem_t* __restrict__ v, const elem_t* __restrict__ dout,
                  const float* __restrict__ lse, const float* __restrict__ delta,
                  elem_t* __restrict__ dk, elem_t* __restrict__ dv,
                  const int* __restrict__ head_pattern, const int* __restrict__ col_ptr,
                  const int* __restrict__ row_idx, const signed char* __restrict__ row_kind,
                  const int* __restrict__ row_mask, const unsigned* __restrict__ masks,
                  const int* __restrict__ perm, const int* __restrict__ pattern_perm, int H,
                  int N, float scale, float scale_log2) {
  __shared__ float sQ[SC_CHUNK * SC_SROW];
  __shared__ float sD[SC_CHUNK * SC_SROW];
  __shared__ float sK[SC_ROWS * HEAD_DIM];
  __shared__ float sV[SC_ROWS * HEAD_DIM];
  __shared__ float sLse[SC_CHUNK];
  __shared__ float sDelta[SC_CHUNK];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int* prow;
  const cta_rows ct = cta_prologue<SC_ROWS>(head_pattern, pattern_perm, perm, H, N, prow, warp);
  const int pos = ct.pos0, jk = ct.in0;  // this warp's key, layout order
  const int tok = token(prow, pos);
  const int tile_first = (blockIdx.x * SC_ROWS) % LAYOUT_BLOCK;

  for (int d = lane; d < HEAD_DIM; d += 32) {
    sK[warp * HEAD_DIM + d] = to_float(k[ct.base + (long long)tok * HEAD_DIM + d]);
    sV[warp * HEAD_DIM + d] = to_float(v[ct.base + (long long)tok * HEAD_DIM + d]);
  }
  float dka[SC_PER_LANE], dva[SC_PER_LANE];
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) dka[i] = dva[i] = 0.f;

  const int e_begin = col_ptr[ct.list_row()], e_end = col_ptr[ct.list_row() + 1];
  for (int e = e_begin; e < e_end; ++e) {
    const int qb = row_idx[e], kind = row_kind[e], mid = row_mask[e];
    for (int qc = 0; qc < LAYOUT_BLOCK; qc += SC_CHUNK) {
      if (kind == ST_KIND_DIAG && qc + SC_CHUNK - 1 < tile_first) continue;
      __syncthreads();
      const int pos0 = qb * LAYOUT_BLOCK + qc;
      sc_load_chunk(sQ, sD, q + ct.base, dout + ct.base, prow, pos0);
      for (int i = threadIdx.x; i < SC_CHUNK; i += SC_ROWS * 32) {
        const long long tq = ct.rbase + token(prow, pos0 + i);
        sLse[i] = lse[tq];
        sDelta[i] = delta[tq];
      }
      __syncthreads();
      float p = 0.f, ds = 0.f;
      if (lane < SC_CHUNK && allowed(kind, mid, qc + lane, jk, masks)) {
        p = fast_exp2(sc_dot(sK + warp * HEAD_DIM, sQ, lane) * scale_log2 - sLse[lane]);
        ds = p * (sc_dot(sV + warp * HEAD_DIM, sD, lane) - sDelta[lane]);
      }
      for (int j = 0; j < SC_CHUNK; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
        const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
        for (int i = 0; i < SC_PER_LANE; ++i) {
          const int d = lane + 32 * i;
          if (d < HEAD_DIM) {
            dva[i] = fmaf(pj, sD[j * SC_SROW + d], dva[i]);
            dka[i] = fmaf(dsj, sQ[j * SC_SROW + d], dka[i]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < SC_PER_LANE; ++i) {
    const int d = lane + 32 * i;
    if (d < HEAD_DIM) {
      dk[ct.base + (long long)tok * HEAD_DIM + d] = from_float(dka[i] * scale);
      dv[ct.base + (long long)tok * HEAD_DIM + d] = from_float(dva[i]);
    }
  }
}
