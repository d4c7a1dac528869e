// tt::beam_select on CPU: plans in parallel; per plan a partial sort with ties to the lower index,
// then the survivors' score terms and tokens gathered.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "../ops.h"

namespace tt {

void beam_select_cpu(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                     const at::Tensor& tokens, at::Tensor& values, at::Tensor& indices, at::Tensor& rows,
                     at::Tensor& terms_out, at::Tensor& tokens_out) {
  check_beam_select(scores, k, group, terms, tokens, values, indices, rows, terms_out, tokens_out);
  const int64_t B = scores.size(0), M = scores.size(1);
  const int64_t term_bytes = terms.size(1) * terms.element_size(), token_len = tokens.size(1);
  const char* terms_in = static_cast<const char*>(terms.data_ptr());
  char* terms_dst = static_cast<char*>(terms_out.data_ptr());
  const int64_t* tokens_in = tokens.data_ptr<int64_t>();
  int64_t* tokens_dst = tokens_out.data_ptr<int64_t>();
  int64_t* index_out = indices.data_ptr<int64_t>();
  int64_t* rows_out = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "tt::beam_select_cpu", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* v = values.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> order(M);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* row = s + b * M;
        std::iota(order.begin(), order.end(), 0);
        // descending, NaN last, ties to the lower index: a strict weak order, so the result is unique
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int64_t i, int64_t j) {
          const bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
          if (ni != nj) return nj;
          if (!ni && row[i] != row[j]) return row[i] > row[j];
          return i < j;
        });
        for (int64_t j = 0; j < k; ++j) {
          const int64_t m = order[j], out = b * k + j;
          const int64_t src = (m / group) * B * group + b * group + m % group;
          v[out] = row[m];
          index_out[out] = m;
          rows_out[out] = src;
          std::memcpy(terms_dst + out * term_bytes, terms_in + src * term_bytes, term_bytes);
          std::memcpy(tokens_dst + out * token_len, tokens_in + src * token_len, token_len * sizeof(int64_t));
        }
      }
    });
  });
}

}  // namespace tt
