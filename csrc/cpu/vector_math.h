// Branch-free float math for the CPU kernels' inner loops: with -fno-trapping-math GCC vectorizes
// loops over these, and inside a function compiled per ISA (target_clones) they are compiled for it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__GNUC__)
#define TT_INLINE inline __attribute__((always_inline))
#else
#define TT_INLINE inline
#endif

namespace tt {

constexpr int64_t kLanes = 16;  // independent partial sums of a reduction (one AVX-512 register)

// exp(x) for x <= 0 to ~1 ulp (range reduction by ln 2, Cephes' expf polynomial), branch free so
// that a loop over it vectorizes; x < -87 (and -inf) gives 0.
TT_INLINE float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (no libm call, so the loop vectorizes)
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t bits;
    float value;
  } scale;  // 2^n, built in the exponent field (punning through a union: GCC vectorizes it)
  scale.bits = (static_cast<int32_t>(n) + 127) << 23;
  return x < -87.0f ? 0.0f : p * scale.value;
}

// Sums n floats in kLanes independent lanes, then a tree: a loop that vectorizes.
TT_INLINE float sum_of(const float* x, int64_t n) {
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[j + l];
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  float sum = lanes[0];
  for (; j < n; ++j) sum += x[j];
  return sum;
}

// erf(x) to 1.5e-7 (Abramowitz & Stegun 7.1.26, the formula of ATen's vectorized erf).
TT_INLINE float erf_approx(float x) {
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return std::copysign(1.0f - p * exp_nonpositive(-a * a), x);
}

}  // namespace tt
