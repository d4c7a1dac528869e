// The order of tt::beam_expand's candidates as integers, shared by the CPU and CUDA implementations
// (and the emulated kernel), so both sort integers, never floats: no comparator that NaN breaks.
//
// Candidate c = w * V + v of a plan scores s = scores[w] + logp[w, v] (one float32 addition).
// Order: larger s first; NaN last (below -inf); -0 and +0 equal; ties to the lower c.
#pragma once

#include <cstdint>
#include <cstring>

#ifndef TT_HOST_DEVICE
#if defined(__CUDACC__)
#define TT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TT_HOST_DEVICE inline
#endif
#endif

namespace tt {

// Candidates per plan (W * V), on every backend: int indices with room for a block's stride past the end.
constexpr int64_t kBeamExpandMaxCandidates = int64_t{1} << 30;

// The score as an unsigned key whose integer order is the candidate order (larger key first):
// the float's bits with the sign bit flipped for s >= 0 and every bit flipped for s < 0, so -inf
// < ... < -0 < +0 < ... < +inf as unsigned integers; -0 as +0; NaN (any payload or sign) 0, the
// only value that maps there (-inf is 0x007fffff).
TT_HOST_DEVICE uint32_t beam_expand_key(float s) {
  if (s != s) return 0u;
  if (s == 0.0f) s = 0.0f;  // -0 ties with +0
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(s);
#else
  std::memcpy(&u, &s, sizeof(u));
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Key and candidate index as one integer, larger first: the key in the high word, the bitwise NOT of
// the index (lower index, larger word) in the low one. Distinct for distinct candidates, so a sort by
// it is unique; 0 is no candidate's (that would need index 0xffffffff): it pads sorts.
TT_HOST_DEVICE uint64_t beam_expand_rank(uint32_t key, uint32_t index) {
  return (static_cast<uint64_t>(key) << 32) | static_cast<uint32_t>(~index);
}

}  // namespace tt
