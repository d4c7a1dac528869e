// tt::log_probs on CPU: the likelihood search's filtered log-softmax, rows in parallel, each row in
// one pass of the steps of tt/reference.py's log_probs: temperature, NaN as -inf (csrc/sampling.h),
// the authors' cdf filter (-1000), top-k (-inf), the log-softmax of the logits shifted by their max.
//
// Rounding: the reference's softmax (for the cdf filter) and log_softmax run torch's CPU kernels,
// which take exp and log from Sleef (libtorch_cpu exports it) on AVX2 / AVX-512 and sum a row in
// vector lanes. `TorchMath` calls the same Sleef functions and adds in the same order, and the cdf
// filter's running sums are accumulated in double as torch.cumsum does, so on x86 (torch's DEFAULT,
// AVX2 and AVX512 kernels) the op equals the reference bit for bit (see cdf_cutoff_select for the one
// case where float32 may not). Elsewhere (another architecture,
// or a torch without those symbols) exp and log come from the C library: the same to rounding.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../sampling.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TT_TORCH_SLEEF 1
// torch's vector exp and log (1-ulp Sleef). Weak: a torch build without them still loads tt._C, and
// the op falls back to the C library's exp and log.
extern "C" {
__m512 Sleef_expf16_u10(__m512) __attribute__((weak));
__m512 Sleef_logf16_u10(__m512) __attribute__((weak));
__m512d Sleef_expd8_u10(__m512d) __attribute__((weak));
__m512d Sleef_logd8_u10(__m512d) __attribute__((weak));
__m256 Sleef_expf8_u10(__m256) __attribute__((weak));
__m256 Sleef_logf8_u10(__m256) __attribute__((weak));
__m256d Sleef_expd4_u10(__m256d) __attribute__((weak));
__m256d Sleef_logd4_u10(__m256d) __attribute__((weak));
}
#endif

namespace tt {

namespace {

// The vector instruction set of torch's CPU kernels here (at::get_cpu_capability: the machine's, or
// ATEN_CPU_CAPABILITY), where the op can reach the same Sleef functions; kScalar otherwise.
enum class Isa { kScalar, kAvx2, kAvx512 };

#ifdef TT_TORCH_SLEEF
// fn over x[0..n) in place (overloaded on float / double): whole vectors, then a masked one.
#define TT_SLEEF_MAP_AVX512(name, T, W, mask_t, suffix, fn)                                            \
  __attribute__((target("avx512f"))) void name(T* x, int64_t n) {                                      \
    int64_t i = 0;                                                                                     \
    for (; i + W <= n; i += W) _mm512_storeu_##suffix(x + i, fn(_mm512_loadu_##suffix(x + i)));        \
    if (i < n) {                                                                                       \
      const mask_t k = static_cast<mask_t>((1u << (n - i)) - 1);                                       \
      _mm512_mask_storeu_##suffix(x + i, k, fn(_mm512_maskz_loadu_##suffix(k, x + i)));                \
    }                                                                                                  \
  }
#define TT_SLEEF_MAP_AVX2(name, T, W, lane_index, suffix, fn)                                          \
  __attribute__((target("avx2,fma"))) void name(T* x, int64_t n) {                                     \
    int64_t i = 0;                                                                                     \
    for (; i + W <= n; i += W) _mm256_storeu_##suffix(x + i, fn(_mm256_loadu_##suffix(x + i)));        \
    if (i < n) {                                                                                       \
      const __m256i k = lane_index(n - i);                                                             \
      _mm256_maskstore_##suffix(x + i, k, fn(_mm256_maskload_##suffix(x + i, k)));                     \
    }                                                                                                  \
  }
// The lanes below `left` of a 256-bit mask, as 32-bit and as 64-bit lanes.
__attribute__((target("avx2"))) __m256i first_lanes32(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
__attribute__((target("avx2"))) __m256i first_lanes64(int64_t left) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(left), _mm256_setr_epi64x(0, 1, 2, 3));
}
TT_SLEEF_MAP_AVX512(exp_avx512, float, 16, __mmask16, ps, Sleef_expf16_u10)
TT_SLEEF_MAP_AVX512(log_avx512, float, 16, __mmask16, ps, Sleef_logf16_u10)
TT_SLEEF_MAP_AVX512(exp_avx512, double, 8, __mmask8, pd, Sleef_expd8_u10)
TT_SLEEF_MAP_AVX512(log_avx512, double, 8, __mmask8, pd, Sleef_logd8_u10)
TT_SLEEF_MAP_AVX2(exp_avx2, float, 8, first_lanes32, ps, Sleef_expf8_u10)
TT_SLEEF_MAP_AVX2(log_avx2, float, 8, first_lanes32, ps, Sleef_logf8_u10)
TT_SLEEF_MAP_AVX2(exp_avx2, double, 4, first_lanes64, pd, Sleef_expd4_u10)
TT_SLEEF_MAP_AVX2(log_avx2, double, 4, first_lanes64, pd, Sleef_logd4_u10)
#undef TT_SLEEF_MAP_AVX512
#undef TT_SLEEF_MAP_AVX2
#endif

Isa torch_isa() {
  static const Isa isa = [] {
#ifdef TT_TORCH_SLEEF
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512" && Sleef_expf16_u10 && Sleef_logf16_u10 && Sleef_expd8_u10 && Sleef_logd8_u10)
      return Isa::kAvx512;
    if (capability == "AVX2" && Sleef_expf8_u10 && Sleef_logf8_u10 && Sleef_expd4_u10 && Sleef_logd4_u10)
      return Isa::kAvx2;
#endif
    return Isa::kScalar;
  }();
  return isa;
}

// exp, log and the sum of a row as torch's vectorized CPU kernels compute them (vec::map,
// vec::map_reduce_all / reduce_all and vec_reduce_all in ATen/cpu/vec/functional_base.h).
template <typename T>
struct TorchMath {
  Isa isa;
  int lanes;  // Vectorized<T>::size(): 64-byte vectors on AVX512, 32-byte ones otherwise
  bool tree;  // float on AVX2/AVX512 reduces the lanes pairwise (halves, quarters, ...); the rest in lane order

  explicit TorchMath(Isa isa_)
      : isa(isa_), lanes((isa_ == Isa::kAvx512 ? 64 : 32) / static_cast<int>(sizeof(T))),
        tree(std::is_same_v<T, float> && isa_ != Isa::kScalar) {}

  void exp(T* x, int64_t n) const {
#ifdef TT_TORCH_SLEEF
    if (isa == Isa::kAvx512) return exp_avx512(x, n);
    if (isa == Isa::kAvx2) return exp_avx2(x, n);
#endif
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
  }

  T log(T v) const {
#ifdef TT_TORCH_SLEEF
    if (isa == Isa::kAvx512 || isa == Isa::kAvx2) {
      isa == Isa::kAvx512 ? log_avx512(&v, 1) : log_avx2(&v, 1);
      return v;
    }
#endif
    return std::log(v);
  }

  // x[0] + ... + x[n-1]: lane l sums x[l], x[l + lanes], ... (a partial last vector adds into its
  // first lanes only), then the lanes are reduced; a row shorter than a vector is summed in order.
  T sum(const T* x, int64_t n) const {
    if (n < lanes) {
      T s = x[0];
      for (int64_t i = 1; i < n; ++i) s += x[i];
      return s;
    }
    switch (lanes) {
      case 16: return sum_in_lanes<16>(x, n);
      case 8: return sum_in_lanes<8>(x, n);
      default: return sum_in_lanes<4>(x, n);
    }
  }

  template <int L>  // the lane count as a constant, so that the loops vectorize
  T sum_in_lanes(const T* x, int64_t n) const {
    T acc[L];
    for (int l = 0; l < L; ++l) acc[l] = x[l];
    int64_t d = L;
    for (; d + L <= n; d += L)
      for (int l = 0; l < L; ++l) acc[l] += x[d + l];
    for (int l = 0; d + l < n; ++l) acc[l] += x[d + l];
    if (tree) {
      for (int half = L / 2; half >= 1; half /= 2)
        for (int l = 0; l < half; ++l) acc[l] += acc[l + half];
      return acc[0];
    }
    T s = acc[0];
    for (int l = 1; l < L; ++l) s += acc[l];
    return s;
  }
};

// max(x[0..n)) in 16 lanes, so that the loop vectorizes (max is exact: the order does not matter).
template <typename T>
T row_max(const T* x, int64_t n) {
  T acc[16];
  std::fill(acc, acc + 16, -std::numeric_limits<T>::infinity());
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] = acc[l] < x[i + l] ? x[i + l] : acc[l];
  for (int l = 0; i < n; ++i, ++l) acc[l] = acc[l] < x[i] ? x[i] : acc[l];
  T m = acc[0];
  for (int l = 1; l < 16; ++l) m = m < acc[l] ? acc[l] : m;
  return m;
}

// The authors' cdf cutoff (cdf_cutoff in csrc/sampling.h: the probability at the last sorted position
// whose running sum stays below cdf, the smallest probability when none does), with the running sums
// rounded as torch.cumsum on CPU rounds them: accumulated in double, compared in T.
//
// float: without sorting the row. The cutoff is the largest probability v with sum(p < v) + v < cdf,
// found by quickselect (a value of cdf or more never is one). Its sums are added in another order than
// torch's, which changes nothing while they are exact: always, unless a probability below 2^-29 is
// summed (then they may differ from torch's in a double's last bit). `scratch` holds 3n values.
template <typename T>
T cdf_cutoff_select(const T* p, int64_t n, T cdf, T* scratch) {
  T *candidates = scratch, *lower = scratch + n, *upper = scratch + 2 * n;
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {  // branch-free compaction, as below
    candidates[m] = p[i];
    m += p[i] < cdf;
  }
  double below = 0;  // the sum of every probability under all candidates
  bool found = false;
  T best = 0;
  while (m > 0) {
    const T a = candidates[0], b = candidates[m / 2], c = candidates[m - 1];
    const T pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // the median of three
    // Three-way partition (lower, equal: counted, upper) without branches: a mispredicted one per
    // value would cost more than the rest of the loop.
    int64_t n_lower = 0, n_upper = 0;
    for (int64_t i = 0; i < m; ++i) {
      const T v = candidates[i];
      lower[n_lower] = v;
      upper[n_upper] = v;
      n_lower += v < pivot;
      n_upper += v > pivot;
    }
    double less[4] = {};  // sum(lower) in lanes (exact sums: the order does not matter)
    int64_t i = 0;
    for (; i + 4 <= n_lower; i += 4)
      for (int l = 0; l < 4; ++l) less[l] += static_cast<double>(lower[i + l]);
    for (; i < n_lower; ++i) less[0] += static_cast<double>(lower[i]);
    const double less_sum = (less[0] + less[1]) + (less[2] + less[3]);
    if (static_cast<T>(below + less_sum + static_cast<double>(pivot)) < cdf) {  // pivot or a larger value
      best = pivot;
      found = true;
      below += less_sum + static_cast<double>(m - n_lower - n_upper) * static_cast<double>(pivot);
      std::swap(candidates, upper);
      m = n_upper;
    } else {
      std::swap(candidates, lower);
      m = n_lower;
    }
  }
  return found ? best : *std::min_element(p, p + n);
}

// float64: torch's sums of doubles round at every step, so only its order gives its sums: sorted.
double cdf_cutoff_sorted(const double* p, int64_t n, double cdf, double* scratch) {
  std::copy(p, p + n, scratch);
  std::sort(scratch, scratch + n);
  return cdf_cutoff(scratch, n, cdf);
}

template <typename T>
void log_probs_rows(const T* logits, T* out, int64_t rows, int64_t V, double temperature, int64_t top_k,
                    double cdf) {
  const TorchMath<T> math(torch_isa());
  const T temp = static_cast<T>(temperature), inf = std::numeric_limits<T>::infinity();
  // Threads only for work worth waking them (ATen's grain: 32768 elements per task); a search step
  // (64 rows of 101 tokens, a few microseconds) stays on the calling thread.
  const int64_t grain = std::max<int64_t>(64, 32768 / V);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> z_(V), e_(V), scratch_(3 * V);
    T *z = z_.data(), *e = e_.data(), *scratch = scratch_.data();
    for (int64_t r = begin; r < end; ++r) {
      const T* row = logits + r * V;
      T* o = out + r * V;
      for (int64_t i = 0; i < V; ++i) z[i] = finite_or_minus_inf(row[i] / temp);
      T zmax = row_max(z, V);
      if (cdf_filters(cdf)) {  // softmax as torch's: exps times the reciprocal of their sum
        for (int64_t i = 0; i < V; ++i) e[i] = shift_by_max(z[i], zmax);
        math.exp(e, V);
        const T inv = T(1) / math.sum(e, V);
        for (int64_t i = 0; i < V; ++i) e[i] *= inv;
        T cutoff;
        if constexpr (std::is_same_v<T, float>)
          cutoff = cdf_cutoff_select(e, V, static_cast<T>(cdf), scratch);
        else
          cutoff = cdf_cutoff_sorted(e, V, cdf, scratch);
        for (int64_t i = 0; i < V; ++i) z[i] = e[i] <= cutoff ? T(-1000) : z[i];
        zmax = row_max(z, V);
      }
      if (top_k > 0 && top_k < V) {  // keep the k largest and everything tied with the k-th
        T kth = zmax;
        if (top_k > 1) {
          std::copy(z, z + V, scratch);
          std::nth_element(scratch, scratch + (top_k - 1), scratch + V, std::greater<T>());
          kth = scratch[top_k - 1];
        }
        for (int64_t i = 0; i < V; ++i) z[i] = z[i] < kth ? -inf : z[i];
      }
      // log_softmax(t) with t = shift_by_max(z): max(t) = 0, so torch's t - max - log(sum) is t - log(sum)
      for (int64_t i = 0; i < V; ++i) e[i] = o[i] = shift_by_max(z[i], zmax);
      math.exp(e, V);
      const T lse = math.log(math.sum(e, V));
      for (int64_t i = 0; i < V; ++i) o[i] -= lse;
    }
  });
}

}  // namespace

void log_probs_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double cdf, at::Tensor& out) {
  check_log_probs(logits, temperature, top_k, cdf, out);
  TORCH_CHECK(logits.is_cpu(), "tt::log_probs: the CPU op got logits on ", logits.device());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "tt::log_probs_cpu", [&] {
    log_probs_rows<scalar_t>(logits.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), logits.size(0),
                             logits.size(1), temperature, top_k, cdf);
  });
}

}  // namespace tt
