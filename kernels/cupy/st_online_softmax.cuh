// st_online_softmax.cuh: the per-row bookkeeping of the online softmax shared by the forward
// kernels (st_fwd_mma.cu, st_fwd_wgmma.cu), whose score fragments (mma.sync's C fragment, the
// wgmma D fragment) both give a thread two rows (halves hf = 0, 1) whose columns are spread
// over the 4 threads of a quad. m: the running max of the SCALED scores (base 2), -inf while a
// row has no allowed key.
#pragma once

namespace st {

// New running maxima from this step's raw row maxima mx (this thread's part; the quad's max is
// taken here): m_run is updated, mu is what to subtract from the scaled scores (0 for a row
// with nothing allowed so far, not (-inf) - (-inf)), alpha the factor for l and O (exactly 1 when
// the max did not grow). Returns whether some row of this thread raised its max.
__device__ __forceinline__ bool online_max(float (&m_run)[2], const float (&mx)[2],
                                           float scale_log2, float (&mu)[2], float (&alpha)[2]) {
  bool grew = false;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float mn = fmaxf(m_run[hf], quad_max(mx[hf]) * scale_log2);  // c > 0 keeps the order
    mu[hf] = (mn == neg_inf()) ? 0.f : mn;
    alpha[hf] = mn > m_run[hf] ? fast_exp2(m_run[hf] - mu[hf]) : 1.f;
    grew |= mn > m_run[hf];
    m_run[hf] = mn;
  }
  return grew;
}

// The end of a row: l = the quad's sum of the partial sums l_part; writes lse = m + log2(l)
// (-inf for a row with no allowed key) from thread t == 0 and returns 1 / l (0 for such a row,
// so that out = 0).
__device__ __forceinline__ float finish_row(float l_part, float m, int t, float* lse_at) {
  const float l = quad_sum(l_part);
  if (t == 0) *lse_at = l > 0.f ? m + fast_log2(l) : neg_inf();
  return l > 0.f ? 1.f / l : 0.f;
}

}  // namespace st
