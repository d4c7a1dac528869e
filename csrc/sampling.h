// Per-row sampling steps shared by the CPU and CUDA implementations of tt::sample_next.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace tt {

// Non-finite logits, one policy in the reference (tt/reference.py), the C++ op and the CUDA kernel:
// a NaN logit counts as -inf (probability 0, never drawn); the softmax shifts by the row's maximum
// and a logit equal to that maximum gets weight exp(0) = 1 even when it is infinite, so the +inf
// tokens share the mass equally and a row with no finite logit (all -inf or NaN) is uniform.
template <typename T>
TT_HOST_DEVICE T finite_or_minus_inf(T z) {
  return z != z ? -static_cast<T>(INFINITY) : z;
}

// z - zmax, and 0 where z equals the maximum (infinite or not): never NaN.
template <typename T>
TT_HOST_DEVICE T shift_by_max(T z, T zmax) {
  return z == zmax ? T(0) : z - zmax;
}

// The cdf filter is off for cdf < 0 (none) and for cdf >= 1: at 1 the authors' rule is decided by
// whether the float sum of the sorted probabilities rounds below 1 (keeping only the top token, or
// filtering every token), so tt defines a cdf of 1 or more as no filter.
TT_HOST_DEVICE bool cdf_filters(double cdf) {
  return cdf >= 0 && cdf < 1;
}

// The authors' cdf cutoff from probabilities sorted ascending: the value at the last position
// whose running sum stays below `cdf` (the first value when none does). Tokens at most this
// likely are filtered out.
template <typename T>
TT_HOST_DEVICE T cdf_cutoff(const T* sorted, int64_t n, T cdf) {
  T cum = 0;
  int64_t last = 0;
  for (int64_t j = 0; j < n; ++j) {
    cum += sorted[j];
    if (cum < cdf) last = j;
  }
  return sorted[last];
}

// Inverse CDF of the unnormalized weights w[0..n) at this row's Philox uniform: the first token
// whose running sum exceeds u * sum (the last token with weight > 0 if rounding runs past it).
TT_HOST_DEVICE int64_t draw_token(const double* w, int64_t n, uint64_t seed, uint64_t offset, uint64_t row) {
  double sum = 0;
  int64_t last_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += w[i];
    if (w[i] > 0) last_kept = i;
  }
  const double target = philox_uniform(seed, offset, row) * sum;
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += w[i];
    if (cum > target) return i;
  }
  return last_kept;
}

}  // namespace tt
