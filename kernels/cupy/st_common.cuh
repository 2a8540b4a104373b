// st_common.cuh: shared definitions for the stbench CuPy kernels (no system headers, so the
// same text compiles under NVRTC, as CuPy does it, and under nvcc for the CI build check).
//
// Compile-time parameters (all given with -D by kernels/cupy/compile.py):
//   ST_DTYPE      element type of q, k, v, out: 0 = float32, 1 = float16, 2 = bfloat16
//   HEAD_DIM      D, the head dimension
//   LAYOUT_BLOCK  b, the layout's block size (16..128)
//   BLOCK_M       rows a CTA owns: queries (forward, dQ) or keys (dK/dV); divides b
//   BLOCK_N       rows streamed per step: keys (forward, dQ) or queries (dK/dV); divides b
//   PERMUTED      1: the plan carries a token permutation (the strided transpose)
//   HAS_PARTIAL   1: some entries are PARTIAL and read a packed bitmask
//
// Plan (layouts/plan.py) as seen by a kernel, pattern p = head_pattern[h]:
//   row_ptr[p * (nb + 1) + r] .. row_ptr[p * (nb + 1) + r + 1]: entries of query block r,
//   col_idx / col_kind / col_mask per entry; the transposed lists col_ptr / row_idx / row_kind /
//   row_mask for the backward pass; masks uint32 [M, b, MASK_WORDS]; perm int32 [Q, N] with
//   perm[pattern_perm[p] * N + i] = ORIGINAL token at layout position i.
// Tensors q, k, v, out, dO, dq, dk, dv are contiguous [B, H, N, D] in ORIGINAL token order;
// lse and delta are float32 [B, H, N], also in original order. Kernels walk the layout order
// and gather / scatter rows through perm, so nothing is permuted in memory.
#pragma once

#ifndef ST_DTYPE
#error "ST_DTYPE must be defined (0 float32, 1 float16, 2 bfloat16)"
#endif
#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif
#ifndef LAYOUT_BLOCK
#error "LAYOUT_BLOCK must be defined"
#endif
#ifndef PERMUTED
#define PERMUTED 0
#endif
#ifndef HAS_PARTIAL
#define HAS_PARTIAL 0
#endif

#define ST_KIND_FULL 0
#define ST_KIND_DIAG 1
#define ST_KIND_PARTIAL 2

#define ST_MASK_WORDS ((LAYOUT_BLOCK + 31) / 32)

namespace st {

#if ST_DTYPE == 0
typedef float elem_t;
#else
typedef unsigned short elem_t;  // raw bits of a float16 or bfloat16
#endif

}  // namespace st

// device intrinsics (inline PTX); tests swap in st_cpu_emu.cuh to run the kernels on a CPU
#include "st_intrinsics.cuh"

namespace st {

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// A compile-time flag as a type (no <type_traits> under NVRTC): a generic lambda called with
// masked_t<true>() and masked_t<false>() is compiled twice, the unmasked copy without any mask
// test (decltype(flag)::value is a constant expression).
template <bool B>
struct masked_t {
  static constexpr bool value = B;
};

// ---------------------------------------------------------------- plan access
// Whether query ``iq`` may attend key ``jk`` (both indices inside their layout blocks) in an
// entry of kind ``kind`` whose bitmask (PARTIAL only) is row ``mid`` of ``masks``.
__device__ __forceinline__ bool allowed(int kind, int mid, int iq, int jk,
                                        const unsigned* __restrict__ masks) {
  if (kind == ST_KIND_FULL) return true;
  if (kind == ST_KIND_DIAG) return jk <= iq;
#if HAS_PARTIAL
  const unsigned w = masks[((long long)mid * LAYOUT_BLOCK + iq) * ST_MASK_WORDS + (jk >> 5)];
  return (w >> (jk & 31)) & 1u;
#else
  return false;
#endif
}

// Row of ``perm`` used by head ``h`` (nullptr: identity order).
__device__ __forceinline__ const int* perm_row(const int* __restrict__ head_pattern,
                                               const int* __restrict__ pattern_perm,
                                               const int* __restrict__ perm, int h, int n) {
#if PERMUTED
  const int pr = pattern_perm[head_pattern[h]];
  return pr >= 0 ? perm + (long long)pr * n : nullptr;
#else
  return nullptr;
#endif
}

// ORIGINAL token of layout position ``pos``.
__device__ __forceinline__ int token(const int* prow, int pos) {
#if PERMUTED
  return prow ? prow[pos] : pos;
#else
  return pos;
#endif
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// max / sum over the 4 threads of a quad (the threads sharing one mma.sync accumulator row)
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace st
