// st_wgmma_ptx.cuh: the inline-PTX pieces of the Hopper warpgroup MMA (wgmma, sm_90a only).
// Included by st_wgmma.cuh; the CPU emulation swaps in st_wgmma_emu.cuh (same functions in C++).
//
// UNVERIFIED ON A GPU: the operand conventions below are this file's reading of the PTX ISA
// ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate", 9.7.15: Matrix Descriptor Format,
// Shared Memory Matrix Layout, Register Fragments). The probe on the GPU (tests/kernels/test_cupy_backend.py) settles them.
//
// Descriptor (64 bits, 9.7.15.5.1.2.2): bits 0-13 start address, 16-29 leading dimension byte
// offset (LBO), 32-45 stride dimension byte offset (SBO), each encoded as (x & 0x3FFFF) >> 4;
// bits 49-51 base offset (0: unused without swizzle); bits 62-63 swizzle mode (0: none, the
// "interleave" layout used here).
//
// Fragments (.m64nNk16, 16-bit inputs, f32 accumulator), warp w = (thread % 128) / 32 of the
// warpgroup, g = lane / 4, t = lane % 4:
//   D: d[i], i < N / 2, is (row 16w + g + 8 ((i >> 1) & 1), col 8 (i >> 2) + 2t + (i & 1))
//   A in registers (4 x b32, two elements each, the lower index in the low half):
//      a[0] = (16w + g, 2t..2t+1), a[1] = (16w + g + 8, 2t..), a[2] = (16w + g, 2t+8..),
//      a[3] = (16w + g + 8, 2t+8..): mma.m16n8k16's A fragment, one per warp's 16 rows. So the
//   D fragment of S over key columns 16j..16j+15 (d[8j .. 8j+7]) packs pairwise into the A
//   fragment of P for k-step j: a[r] = pack(d[8j + 2r], d[8j + 2r + 1]).
// Ordering: wgmma.fence before the first wgmma and after registers it reads (A, D) were
// written by other instructions; commit_group closes a batch; wait_group<N> waits until at
// most N batches are in flight. Shared memory written by ordinary stores or cp.async (the
// generic proxy) must be made visible to wgmma (the async proxy) by fence.proxy.async before
// the barrier that precedes the wgmma.
#pragma once

namespace st {

#if ST_DTYPE == 1
#define ST_WG_TYPES ".f32.f16.f16"
#else
#define ST_WG_TYPES ".f32.bf16.bf16"
#endif

__device__ __forceinline__ unsigned long long wg_encode(unsigned x) {
  return (unsigned long long)((x & 0x3FFFFu) >> 4);
}

// Descriptor of a no-swizzle operand at shared address ``p``; lbo, sbo in bytes.
__device__ __forceinline__ unsigned long long wg_desc(const void* p, unsigned lbo, unsigned sbo) {
  return wg_encode(smem_addr(p)) | (wg_encode(lbo) << 16) | (wg_encode(sbo) << 32);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// generic-proxy writes of shared memory (st.shared, cp.async) -> visible to wgmma's async proxy
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// keeps the compiler from moving reads / writes of an accumulator across wgmma / wait_group
__device__ __forceinline__ void wg_fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void wg_fence_operand(unsigned& x) {
  asm volatile("" : "+r"(x)::"memory");
}

#define ST_WG_D32                                                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ST_WG_D32_OUT(d)                                                                     \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), \
      "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),           \
      "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),           \
      "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// D (64 x 64, f32, 32 registers a thread) = A (64 x 16) B (16 x 64) + (accumulate ? D : 0),
// A and B from shared memory through descriptors; TRANS_A / TRANS_B = 1: MN-major operand.
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wg_mma_ss(float* d, unsigned long long da, unsigned long long db,
                                          int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16" ST_WG_TYPES " " ST_WG_D32
      ", %32, %33, p, 1, 1, %35, %36;\n}\n"
      : ST_WG_D32_OUT(d)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

// The same with A (64 x 16) from registers, a[4] as in the header.
template <int TRANS_B>
__device__ __forceinline__ void wg_mma_rs(float* d, const unsigned* a, unsigned long long db,
                                          int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16" ST_WG_TYPES " " ST_WG_D32
      ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : ST_WG_D32_OUT(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate), "n"(TRANS_B));
}

}  // namespace st
