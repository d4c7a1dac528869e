// tt::sample_next on CPU: rows in parallel, one pass of filters per row, Philox draw. NaN logits
// count as -inf before anything sorts them (csrc/sampling.h), so std::sort and std::nth_element
// only ever see ordered values.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../ops.h"
#include "../sampling.h"

namespace tt {

namespace {

template <typename scalar_t>
void sample_rows(const at::Tensor& logits, double temperature, int64_t top_k, double cdf, const double* mids_d,
                 const float* mids_f, uint64_t seed, uint64_t offset, int64_t* tokens, double* expectation_d,
                 float* expectation_f) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = logits.size(0), V = logits.size(1);
  const scalar_t* data = logits.data_ptr<scalar_t>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(V), p(V), sorted(V);
    std::vector<double> w(V);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = data + r * V;
      acc_t zmax = -std::numeric_limits<acc_t>::infinity();
      for (int64_t i = 0; i < V; ++i) {
        z[i] = finite_or_minus_inf(static_cast<acc_t>(row[i]) / static_cast<acc_t>(temperature));
        zmax = std::max(zmax, z[i]);
      }
      acc_t total = 0;
      for (int64_t i = 0; i < V; ++i) total += (p[i] = std::exp(shift_by_max(z[i], zmax)));
      for (int64_t i = 0; i < V; ++i) p[i] /= total;
      if (mids_d != nullptr || mids_f != nullptr) {  // expectation under the raw probabilities, stop token dropped
        acc_t e = 0;
        for (int64_t i = 0; i < V - 1; ++i) e += p[i] * static_cast<acc_t>(mids_d ? mids_d[i] : mids_f[i]);
        if (expectation_d) expectation_d[r] = e; else expectation_f[r] = static_cast<float>(e);
      }
      if (cdf_filters(cdf)) {  // drop every token at most as likely as the last sorted one with cumsum < cdf
        std::copy(p.begin(), p.end(), sorted.begin());
        std::sort(sorted.begin(), sorted.end());
        const acc_t cutoff = cdf_cutoff(sorted.data(), V, static_cast<acc_t>(cdf));
        for (int64_t i = 0; i < V; ++i)
          if (p[i] <= cutoff) z[i] = static_cast<acc_t>(-1000);
      }
      if (top_k > 0) {  // keep the k largest and everything tied with the k-th
        std::copy(z.begin(), z.end(), sorted.begin());
        std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<acc_t>());
        const acc_t kth = sorted[top_k - 1];
        for (int64_t i = 0; i < V; ++i)
          if (z[i] < kth) z[i] = -std::numeric_limits<acc_t>::infinity();
      }
      acc_t kept_max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t i = 0; i < V; ++i) kept_max = std::max(kept_max, z[i]);
      for (int64_t i = 0; i < V; ++i) {
        const double d = shift_by_max(static_cast<double>(z[i]), static_cast<double>(kept_max));
        w[i] = d < -746.0 ? 0.0 : std::exp(d);  // exp underflows to 0 there anyway: skip the filtered
      }
      tokens[r] = draw_token(w.data(), V, seed, offset, static_cast<uint64_t>(r));
    }
  });
}

}  // namespace

void sample_next_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                     const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state, at::Tensor& tokens,
                     at::Tensor& expectation) {
  check_sample_next(logits, temperature, top_k, cdf, midpoints, rng_state, tokens, expectation);
  const int64_t* state = rng_state.data_ptr<int64_t>();
  const bool has_mids = midpoints.has_value();
  const double* mids_d = has_mids && midpoints->scalar_type() == at::kDouble ? midpoints->data_ptr<double>() : nullptr;
  const float* mids_f = has_mids && midpoints->scalar_type() == at::kFloat ? midpoints->data_ptr<float>() : nullptr;
  double* exp_d = has_mids && expectation.scalar_type() == at::kDouble ? expectation.data_ptr<double>() : nullptr;
  float* exp_f = has_mids && expectation.scalar_type() == at::kFloat ? expectation.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "tt::sample_next_cpu", [&] {
    sample_rows<scalar_t>(logits, temperature, top_k, cdf, mids_d, mids_f, static_cast<uint64_t>(state[0]),
                          static_cast<uint64_t>(state[1]), tokens.data_ptr<int64_t>(), exp_d, exp_f);
  });
}

}  // namespace tt
