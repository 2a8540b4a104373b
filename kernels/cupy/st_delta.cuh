// st_delta.cuh: the backward's softmax correction, included by both backward kernel files
// (st_bwd_mma.cu, st_scalar.cu), so each backward module carries its own.
//
//   delta[r] = sum_d dO[r, d] * O[r, d]   in float32, for every row r of the [B * H * N, D] view
//
// One warp per row: lane j takes columns j, j + 32, ...; products and the warp sum in float32.
// Grid (ceil(rows / ST_DELTA_ROWS)), block ST_DELTA_ROWS * 32 threads. It replaces torch's
// cast-cast-multiply-reduce (four kernels, about 0.4 ms at B x H x N x D = 65536 x 8 x 64).
#pragma once

#define ST_DELTA_ROWS 8  // rows (warps) per CTA

extern "C" __global__ void st_bwd_delta(const st::elem_t* __restrict__ dout,
                                        const st::elem_t* __restrict__ out,
                                        float* __restrict__ delta, int rows) {
  const int row = blockIdx.x * ST_DELTA_ROWS + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together (row is uniform in a warp)
  const long long base = (long long)row * HEAD_DIM;
  float s = 0.f;
  for (int c = lane; c < HEAD_DIM; c += 32)
    s += st::to_float(dout[base + c]) * st::to_float(out[base + c]);
  s = st::warp_sum(s);
  if (lane == 0) delta[row] = s;
}
