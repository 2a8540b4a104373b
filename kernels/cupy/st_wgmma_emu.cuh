// st_wgmma_emu.cuh: the functions of st_wgmma_ptx.cuh in C++, for the CPU emulation
// (emulate.py pastes it in place of st_wgmma_ptx.cuh, after st_cpu_emu.cuh).
//
// This encodes THIS PROJECT'S READING of the PTX ISA (wgmma .m64nNk16, no-swizzle descriptors,
// register fragments; st_wgmma_ptx.cuh and st_wgmma.cuh write it down). A kernel that passes
// here is consistent with that reading; only the probe on an sm_90a GPU (test_wgmma_probe_confirms_the_reading) can
// show that the reading is the hardware's.
//
// wgmma is warpgroup-collective: the 128 threads of a warpgroup meet at its barrier, each
// publishes a pointer to its A registers (register-A form), then each thread computes its own
// accumulator elements (D fragment layout) from the other threads' A registers or from shared
// memory through the descriptors, in double, rounded to float once; a second barrier keeps A
// registers alive until everyone has read them. The product completes at once, so fence /
// commit_group / wait_group / fence.proxy.async are no-ops (no asynchrony is emulated: a
// kernel that reads D before wait_group, or writes shared memory under an in-flight wgmma,
// passes here and fails on the GPU).
//
// Descriptor start addresses hold 18 bits of the shared address. The emulator's shared
// arrays are host statics, so wg_desc records each pointer it encodes (an "anchor") and the
// decoder takes the address with those 18 low bits nearest to an anchor (descriptors are
// derived from anchors by offsets far below 128 KB, and one library's shared arrays span less
// than 128 KB). The anchors are per library.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace st {

namespace wg_emu {
// static, not inline: an inline function's static would be one object across every emulated
// library loaded in the process (a GNU unique symbol), mixing their anchors
static std::vector<std::uintptr_t>& anchors() {
  static std::vector<std::uintptr_t> v;
  return v;
}

inline std::uintptr_t decode_start(unsigned long long desc) {
  const std::uintptr_t low = (std::uintptr_t)(desc & 0x3FFFull) << 4;
  std::uintptr_t best = 0, best_dist = ~(std::uintptr_t)0;
  for (std::uintptr_t a : anchors()) {
    const std::uintptr_t win = a & ~(std::uintptr_t)0x3FFFF;
    for (std::uintptr_t cand : {win + low - 0x40000, win + low, win + low + 0x40000}) {
      const std::uintptr_t dist = cand > a ? cand - a : a - cand;
      if (dist < best_dist) best = cand, best_dist = dist;
    }
  }
  if (best_dist >= 0x20000) {
    std::fprintf(stderr, "wgmma emulation: descriptor start matches no shared array\n");
    std::abort();
  }
  return best;
}

// a no-swizzle operand: element (mn, k) (16-bit elements) at start + (mn / 8) SBO + (k / 8) LBO
// + inner, inner = 16 (mn % 8) + 2 (k % 8) K-major (((8,m),(T,2k)) : ((T,SBO),(1,LBO))) or
// 16 (k % 8) + 2 (mn % 8) MN-major (((T,m),(8,k)) : ((1,SBO),(T,LBO))); T = 8 elements = 16 B
struct Operand {
  std::uintptr_t start = 0, lbo = 0, sbo = 0;
  int mn_major = 0;
  Operand(unsigned long long desc, int trans) : mn_major(trans) {
    if ((desc >> 62) != 0) {
      std::fprintf(stderr, "wgmma emulation: only the no-swizzle layout is emulated\n");
      std::abort();
    }
    start = decode_start(desc);
    lbo = ((desc >> 16) & 0x3FFFull) << 4;
    sbo = ((desc >> 32) & 0x3FFFull) << 4;
  }
  float operator()(int mn, int k) const {
    const std::uintptr_t inner = mn_major ? 16 * (k % 8) + 2 * (mn % 8) : 16 * (mn % 8) + 2 * (k % 8);
    unsigned short bits;
    std::memcpy(&bits, reinterpret_cast<const void*>(start + (mn / 8) * sbo + (k / 8) * lbo + inner), 2);
    return to_float(bits);
  }
};

// D (64 x 64) = A B (+ D); a_regs: this thread's A fragment (register form) or nullptr
inline void mma(float* d, const unsigned* a_regs, unsigned long long da, unsigned long long db,
                int accumulate, int trans_a, int trans_b) {
  auto& grp = st_emu::warpgroup();
  const int tid = (int)(threadIdx.x % 128);
  grp.a[tid] = a_regs;
  st_emu::arrive_and_wait(grp.bar);
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  const Operand b_op(db, trans_b);
  float a_el[2][16];  // A(row, 0..15) for this thread's two rows
  for (int h = 0; h < 2; ++h) {
    const int row = 16 * w + g + 8 * h;
    for (int kk = 0; kk < 16; ++kk) {
      if (a_regs) {  // A(row, kk): thread 32 (row / 16) + 4 (row % 8) + (kk % 8) / 2,
                     // register (row % 16 >= 8) + 2 (kk >= 8), half kk % 2
        const int src = 32 * (row / 16) + 4 * (row % 8) + (kk % 8) / 2;
        const int reg = (row % 16 >= 8 ? 1 : 0) + (kk >= 8 ? 2 : 0);
        a_el[h][kk] = elem_of(grp.a[src][reg], kk & 1);
      } else {
        a_el[h][kk] = Operand(da, trans_a)(row, kk);
      }
    }
  }
  for (int i = 0; i < 32; ++i) {
    const int h = (i >> 1) & 1, col = 8 * (i >> 2) + 2 * t + (i & 1);
    double acc = accumulate ? d[i] : 0.0;
    for (int kk = 0; kk < 16; ++kk)
      acc += (double)a_el[h][kk] * (double)b_op(col, kk);
    d[i] = (float)acc;
  }
  st_emu::arrive_and_wait(grp.bar);
}
}  // namespace wg_emu

inline unsigned long long wg_encode(unsigned long long x) { return (x & 0x3FFFFull) >> 4; }

inline unsigned long long wg_desc(const void* p, unsigned lbo, unsigned sbo) {
  const std::uintptr_t u = reinterpret_cast<std::uintptr_t>(p);
  auto& an = wg_emu::anchors();
  bool seen = false;
  for (std::uintptr_t a : an) seen |= a == u;
  if (!seen) an.push_back(u);
  return wg_encode(u) | (wg_encode(lbo) << 16) | (wg_encode(sbo) << 32);
}

inline void wg_fence() {}
inline void wg_commit() {}
template <int N>
inline void wg_wait() {}
inline void fence_proxy_async() {}
inline void wg_fence_operand(float&) {}
inline void wg_fence_operand(unsigned&) {}

template <int TRANS_A, int TRANS_B>
inline void wg_mma_ss(float* d, unsigned long long da, unsigned long long db, int accumulate) {
  wg_emu::mma(d, nullptr, da, db, accumulate, TRANS_A, TRANS_B);
}
template <int TRANS_B>
inline void wg_mma_rs(float* d, const unsigned* a, unsigned long long db, int accumulate) {
  wg_emu::mma(d, a, 0, db, accumulate, 0, TRANS_B);
}

}  // namespace st
