// st_intrinsics.cuh: the device-only pieces of the stbench CuPy kernels (inline PTX):
// exp2 / log2, element conversions, two-float packing and the m16n8k16 tensor-core product.
// Included by st_common.cuh; the CPU emulation (st_cpu_emu.cuh) defines the same functions.
#pragma once

namespace st {

__device__ __forceinline__ float fast_exp2(float x) {  // ex2(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------- element conversions
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(unsigned short x) {
#if ST_DTYPE == 1
  float y;
  asm("cvt.f32.f16 %0, %1;" : "=f"(y) : "h"(x));
  return y;
#else
  return __uint_as_float(((unsigned)x) << 16);  // bfloat16 is the top half of a float32
#endif
}

__device__ __forceinline__ elem_t from_float(float x) {
#if ST_DTYPE == 0
  return x;
#elif ST_DTYPE == 1
  unsigned short y;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(y) : "f"(x));
  return y;
#else
  unsigned short y;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(y) : "f"(x));
  return y;
#endif
}

#if ST_DTYPE != 0
// Two floats -> one 32-bit register of two 16-bit elements, ``lo`` in the low half (the element
// with the lower index, as mma.sync fragments expect).
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  unsigned y;
#if ST_DTYPE == 1
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(y) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(y) : "f"(hi), "f"(lo));
#endif
  return y;
}

// D (16x8, f32) += A (16x16, row) * B (16x8, col); fragment layouts of the PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type" (g = lane / 4, t = lane % 4):
//   A: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B: b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g)
//   C: c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
// Not volatile: a pure function of its registers, so the compiler may schedule and interleave the
// independent products freely.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#if ST_DTYPE == 1
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
// ---------------------------------------------------------------- shared-memory matrix loads
// ldmatrix: four 8x8 matrices of 16-bit elements from shared memory; lane l gives the address
// of row (l % 8) of matrix (l / 8) (16 contiguous bytes, 16-byte aligned). Without .trans, r[i]
// holds elements (g, 2t) and (g, 2t + 1) of matrix i (g = lane / 4, t = lane % 4); with .trans,
// elements (2t, g) and (2t + 1, g): exactly an mma B fragment register of a k-major tile.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned long long s;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
  return (unsigned)s;
}

// cp.async: 16-byte global -> shared copies that complete asynchronously, in commit groups;
// wait_group<N> waits until at most N of this thread's groups are still in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const elem_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const elem_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
#endif  // ST_DTYPE != 0

}  // namespace st
