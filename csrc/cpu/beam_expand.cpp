// tt::beam_expand on CPU: plans in parallel; per plan every candidate's rank (csrc/beam_expand.h: an
// integer, so NaN cannot break the sort), the k largest selected (nth_element), then sorted.
#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "../beam_expand.h"
#include "../ops.h"

namespace tt {

void beam_expand_cpu(const at::Tensor& scores, const at::Tensor& logp, int64_t k, at::Tensor& values,
                     at::Tensor& parents, at::Tensor& tokens) {
  check_beam_expand(scores, logp, k, values, parents, tokens);
  const int64_t B = scores.size(0), W = scores.size(1), V = logp.size(1), N = W * V;
  const float* s = scores.data_ptr<float>();
  const float* lp = logp.data_ptr<float>();
  float* value_out = values.data_ptr<float>();
  int64_t* parent_out = parents.data_ptr<int64_t>();
  int64_t* token_out = tokens.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> rank(N);
    for (int64_t b = begin; b < end; ++b) {
      const float* score = s + b * W;
      const float* row = lp + b * N;  // the plan's [W, V] log-probs: candidate c at row[c]
      for (int64_t w = 0, c = 0; w < W; ++w)
        for (int64_t v = 0; v < V; ++v, ++c)
          rank[c] = beam_expand_rank(beam_expand_key(score[w] + row[c]), static_cast<uint32_t>(c));
      if (k < N) std::nth_element(rank.begin(), rank.begin() + (k - 1), rank.end(), std::greater<>());
      std::sort(rank.begin(), rank.begin() + k, std::greater<>());
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = ~static_cast<uint32_t>(rank[j]), w = c / V, out = b * k + j;
        value_out[out] = score[w] + row[c];
        parent_out[out] = w;
        token_out[out] = c - w * V;
      }
    }
  });
}

}  // namespace tt
