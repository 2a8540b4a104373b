// st_plan_walk.cuh: the plan walk shared by the tensor-core kernels (st_fwd_mma.cu,
// st_bwd_mma.cu through st_mma_tiles.cuh, and st_fwd_wgmma.cu). Needs BLOCK_M, BLOCK_N and
// LAYOUT_BLOCK.
#pragma once

namespace st {

// A CTA walks "steps": (entry e of its plan list, chunk c = first row of a BLOCK_N-row chunk of
// the entry's block). On a causal-diagonal entry, chunks whose rows are all masked are skipped:
// keys above every owned query (query owner), or queries below every owned key (key owner).
// ``in0``: the owned tile's first row inside its layout block.
__device__ __forceinline__ bool step_valid(int kind, int c, int in0, bool key_owner) {
  if (kind != ST_KIND_DIAG) return true;
  return key_owner ? (c + BLOCK_N - 1 >= in0) : (c <= in0 + BLOCK_M - 1);
}

// Move (e, c) to the next valid step (``first``: to the first valid step from (e, c)); e reaches
// e_end when the walk is over.
__device__ __forceinline__ void step_advance(int& e, int& c, int e_end,
                                             const signed char* __restrict__ kinds, int in0,
                                             bool key_owner, bool first) {
  if (!first) {
    c += BLOCK_N;
    if (c >= LAYOUT_BLOCK) ++e, c = 0;
  }
  while (e < e_end && !step_valid(kinds[e], c, in0, key_owner)) {
    c += BLOCK_N;
    if (c >= LAYOUT_BLOCK) ++e, c = 0;
  }
}

// Whether step (kind, chunk c) needs the per-element mask for a warp owning rows lo .. hi
// (inside their layout block). FULL never does. DIAG (allowed: key <= query) does unless every
// pair passes: for a query owner the chunk holds keys c .. c + BLOCK_N - 1 and needs the mask
// iff its last key lies above the warp's first query; for a key owner the chunk holds queries
// and needs it iff its first query lies below the warp's last key. PARTIAL always does.
__device__ __forceinline__ bool step_masked(int kind, int c, int lo, int hi, bool key_owner) {
  if (kind == ST_KIND_FULL) return false;
  if (kind == ST_KIND_DIAG) return key_owner ? (c < hi) : (c + BLOCK_N - 1 > lo);
  return true;
}

}  // namespace st
