// st_cpu_emu.cuh: run the stbench CUDA kernels on a CPU, for tests without a GPU.
//
// Pasted in place of st_intrinsics.cuh by kernels/cupy/emulate.py and compiled with g++ as a
// shared library. Every CUDA thread of a CTA is a fiber (ucontext) on one OS thread; CTAs run
// one after another, so ``__shared__`` arrays become function statics shared by the CTA's
// threads. __syncthreads is a barrier of the CTA; warp shuffles and mma.sync exchange values
// through a per-warp buffer between two barriers of the warp (a fiber yields while it waits);
// warpgroup-collective wgmma (st_wgmma_emu.cuh) likewise through a per-warpgroup buffer and
// barrier of 128 threads. mma16816 follows the fragment layouts of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"); conversions round to nearest
// even as the hardware does. For tiny shapes.
#pragma once

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <utility>
#include <vector>

struct st_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace st_emu {
// Cooperative fibers (ucontext): the CTA's "threads" run on one OS thread and switch only at
// barriers, which keeps __syncthreads, shuffles and mma.sync cheap to emulate.
constexpr int MAX_WARPS = 32;
constexpr std::size_t STACK_BYTES = 256 * 1024;

struct Barrier {
  int expected = 0, arrived = 0;
  unsigned long generation = 0;
};
struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  st_dim3 thread, block;
  int lane = 0, warp = 0;
  bool done = false;
};
struct Warp {
  Barrier bar;
  float f[32];
  unsigned a[32][4];
  unsigned b[32][2];
  const void* p[32];
};
struct WarpGroup {  // 4 consecutive warps (wgmma)
  Barrier bar;
  const unsigned* a[128];  // each thread's A registers during a wgmma with A from registers
};
struct Cta {
  Barrier bar;
  Warp warps[MAX_WARPS];
  WarpGroup groups[MAX_WARPS / 4];
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  std::function<void()> body;
};
inline Cta* g_cta = nullptr;
inline Fiber* g_cur = nullptr;

inline Warp& warp() { return g_cta->warps[g_cur->warp]; }
inline WarpGroup& warpgroup() { return g_cta->groups[g_cur->warp / 4]; }

inline void yield() { swapcontext(&g_cur->ctx, &g_cta->scheduler); }

inline void arrive_and_wait(Barrier& b) {
  const unsigned long gen = b.generation;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield();
}

inline void fiber_entry() {
  g_cta->body();
  g_cur->done = true;
  // returning switches to uc_link, the scheduler
}

template <typename... A, std::size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*reinterpret_cast<std::remove_reference_t<A>*>(args[I])...);
}

// Launch ``k`` on grid (gx, gy) with ``nt`` threads per CTA; args as for cuLaunchKernel.
template <typename... A>
void launch(void (*k)(A...), int gx, int gy, int nt, void** args) {
  const int nw = (nt + 31) / 32;
  for (int by = 0; by < gy; ++by)
    for (int bx = 0; bx < gx; ++bx) {
      auto cta = std::make_unique<Cta>();
      cta->bar.expected = nt;
      for (int w = 0; w < nw; ++w) cta->warps[w].bar.expected = 32;
      for (int w = 0; w < nw / 4; ++w) cta->groups[w].bar.expected = 128;
      cta->body = [=] { call_with(k, args, std::index_sequence_for<A...>{}); };
      cta->fibers.resize(nt);
      g_cta = cta.get();
      for (int t = 0; t < nt; ++t) {
        Fiber& f = cta->fibers[t];
        f.thread.x = t;
        f.block.x = bx;
        f.block.y = by;
        f.lane = t % 32;
        f.warp = t / 32;
        f.stack.reset(new char[STACK_BYTES]);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = &cta->scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
      }
      for (bool busy = true; busy;) {
        busy = false;
        for (auto& f : cta->fibers) {
          if (f.done) continue;
          busy = true;
          g_cur = &f;
          swapcontext(&cta->scheduler, &f.ctx);
        }
      }
      g_cur = nullptr;
      g_cta = nullptr;
    }
}
}  // namespace st_emu

#define threadIdx (st_emu::g_cur->thread)
#define blockIdx (st_emu::g_cur->block)
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { st_emu::arrive_and_wait(st_emu::g_cta->bar); }

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline unsigned st_float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}

inline float st_shfl_exchange(float x, int src) {
  auto& w = st_emu::warp();
  w.f[st_emu::g_cur->lane] = x;
  st_emu::arrive_and_wait(w.bar);
  const float y = w.f[src & 31];
  st_emu::arrive_and_wait(w.bar);
  return y;
}
inline float __shfl_xor_sync(unsigned, float x, int o) {
  return st_shfl_exchange(x, st_emu::g_cur->lane ^ o);
}
inline float __shfl_sync(unsigned, float x, int src) { return st_shfl_exchange(x, src); }
inline int __any_sync(unsigned, int pred) {
  auto& w = st_emu::warp();
  w.f[st_emu::g_cur->lane] = pred ? 1.f : 0.f;
  st_emu::arrive_and_wait(w.bar);
  int any = 0;
  for (int l = 0; l < 32; ++l) any |= w.f[l] != 0.f;
  st_emu::arrive_and_wait(w.bar);
  return any;
}

namespace st {

inline float fast_exp2(float x) { return std::exp2(x); }
inline float fast_log2(float x) { return std::log2(x); }

inline float half_bits_to_float(unsigned short x) {
  _Float16 h;
  std::memcpy(&h, &x, 2);
  return (float)h;
}
inline unsigned short float_to_half_bits(float x) {
  _Float16 h = (_Float16)x;  // round to nearest even
  unsigned short u;
  std::memcpy(&u, &h, 2);
  return u;
}
inline unsigned short float_to_bf16_bits(float x) {
  const unsigned u = st_float_as_uint(x);
  if (std::isnan(x)) return 0x7fc0;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
}

inline float to_float(float x) { return x; }
inline float to_float(unsigned short x) {
#if ST_DTYPE == 1
  return half_bits_to_float(x);
#else
  return __uint_as_float(((unsigned)x) << 16);
#endif
}

inline elem_t from_float(float x) {
#if ST_DTYPE == 0
  return x;
#elif ST_DTYPE == 1
  return float_to_half_bits(x);
#else
  return float_to_bf16_bits(x);
#endif
}

#if ST_DTYPE != 0
inline unsigned pack2(float lo, float hi) {
  return (unsigned)from_float(lo) | ((unsigned)from_float(hi) << 16);
}

inline float elem_of(unsigned reg, int half) {
  return to_float((unsigned short)(half ? reg >> 16 : reg & 0xffffu));
}

// D = A * B + C for one warp, each lane holding its fragments (layouts in st_intrinsics.cuh)
inline void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  auto& w = st_emu::warp();
  const int lane = st_emu::g_cur->lane;
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  w.b[lane][0] = b0;
  w.b[lane][1] = b1;
  st_emu::arrive_and_wait(w.bar);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    double acc = c[i];
    for (int kk = 0; kk < 16; ++kk) {
      // A(row, kk): lane (row % 8) * 4 + (kk % 8) / 2, register (row >= 8) + 2 (kk >= 8)
      const int a_lane = (row % 8) * 4 + (kk % 8) / 2;
      const int a_reg = (row >= 8 ? 1 : 0) + (kk >= 8 ? 2 : 0);
      // B(kk, col): lane col * 4 + (kk % 8) / 2, register (kk >= 8)
      const int b_lane = col * 4 + (kk % 8) / 2;
      const int b_reg = kk >= 8 ? 1 : 0;
      acc += (double)elem_of(w.a[a_lane][a_reg], kk & 1) *
             (double)elem_of(w.b[b_lane][b_reg], kk & 1);
    }
    c[i] = (float)acc;
  }
  st_emu::arrive_and_wait(w.bar);
}
// cp.async completes at once here (no overlap to emulate); commit / wait are no-ops
inline void cp_async16(void* smem, const void* gmem) { std::memcpy(smem, gmem, 16); }
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

// ldmatrix (x4, optionally .trans): lanes publish their row addresses, each lane then gathers
// its registers from the four 8x8 matrices (layout in st_intrinsics.cuh)
inline void ldsm_emu(unsigned* r, const elem_t* p, bool trans) {
  auto& w = st_emu::warp();
  const int lane = st_emu::g_cur->lane;
  w.p[lane] = p;
  st_emu::arrive_and_wait(w.bar);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    unsigned v = 0;
    for (int h = 0; h < 2; ++h) {
      const int row = trans ? 2 * t + h : g, col = trans ? g : 2 * t + h;
      const elem_t* src = static_cast<const elem_t*>(w.p[i * 8 + row]);
      v |= (unsigned)src[col] << (16 * h);
    }
    r[i] = v;
  }
  st_emu::arrive_and_wait(w.bar);
}
inline void ldsm_x4(unsigned* r, const elem_t* p) { ldsm_emu(r, p, false); }
inline void ldsm_x4_trans(unsigned* r, const elem_t* p) { ldsm_emu(r, p, true); }
#endif

}  // namespace st
