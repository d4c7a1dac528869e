// Declarations of the tt ops' implementations and their shared argument checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace tt {

// Parameters of one transformer block, in the order tt::decode_layers takes them: tt/block_weights.py's
// BlockWeights, the same names (tests/test_model.py checks that they agree); kWeightsPerLayer counts them.
enum BlockWeight : int64_t {
  kLn1Weight, kLn1Bias, kQkvWeight, kQkvBias, kAttnProjWeight, kAttnProjBias,
  kLn2Weight, kLn2Bias, kFcWeight, kFcBias, kMlpProjWeight, kMlpProjBias, kWeightsPerLayer
};

// Argument checks shared by the CPU and CUDA implementations (host code).
void check_sample_next(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                       const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state,
                       const at::Tensor& tokens, const at::Tensor& expectation);
void check_beam_select(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                       const at::Tensor& tokens, const at::Tensor& values, const at::Tensor& indices,
                       const at::Tensor& rows, const at::Tensor& terms_out, const at::Tensor& tokens_out);
void check_beam_expand(const at::Tensor& scores, const at::Tensor& logp, int64_t k, const at::Tensor& values,
                       const at::Tensor& parents, const at::Tensor& tokens);

void check_log_probs(const at::Tensor& logits, double temperature, int64_t top_k, double cdf, const at::Tensor& out);
void check_philox_uniform(const at::Tensor& out);
void check_dropout_mask(double p, const at::Tensor& mask);
void check_dropout_apply(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& out);
void check_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& prefix_k, const std::optional<at::Tensor>& prefix_v,
                            int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t q_slot,
                            int64_t transition_dim,
                            const std::optional<at::Tensor>& key_start, const at::Tensor& out,
                            const std::optional<at::Tensor>& goal_k, const std::optional<at::Tensor>& goal_v,
                            int64_t goal_group_rows, const std::optional<at::Tensor>& goal_rows);

void philox_uniform_cpu(int64_t seed, int64_t offset, at::Tensor& out);
void dropout_mask_cpu(int64_t seed, int64_t offset, double p, at::Tensor& mask);
void dropout_apply_cpu(const at::Tensor& x, const at::Tensor& mask, double scale, at::Tensor& out);
void sample_next_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                     const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state, at::Tensor& tokens,
                     at::Tensor& expectation);
void beam_select_cpu(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                     const at::Tensor& tokens, at::Tensor& values, at::Tensor& indices, at::Tensor& rows,
                     at::Tensor& terms_out, at::Tensor& tokens_out);
void beam_expand_cpu(const at::Tensor& scores, const at::Tensor& logp, int64_t k, at::Tensor& values,
                     at::Tensor& parents, at::Tensor& tokens);
void log_probs_cpu(const at::Tensor& logits, double temperature, int64_t top_k, double cdf, at::Tensor& out);
void check_decode_layers(const at::Tensor& x, at::TensorList weights, const at::Tensor& cache_k,
                         const at::Tensor& cache_v, int64_t n_head, int64_t slot, int64_t shared, int64_t groups,
                         int64_t group_rows, const std::optional<at::Tensor>& prefix_rows,
                         const std::optional<at::Tensor>& goal_k, const std::optional<at::Tensor>& goal_v);
at::Tensor decode_layers_cpu(const at::Tensor& x, at::TensorList weights, const at::Tensor& cache_k,
                             const at::Tensor& cache_v, int64_t n_head, int64_t slot, int64_t shared, int64_t groups,
                             int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t transition_dim,
                             const std::optional<at::Tensor>& key_start, const std::optional<at::Tensor>& goal_k,
                             const std::optional<at::Tensor>& goal_v, int64_t goal_group_rows,
                             const std::optional<at::Tensor>& goal_rows, std::optional<at::TensorList> packed_weights);
std::vector<at::Tensor> decode_pack_cpu(at::TensorList weights, int64_t rows);
void decode_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& prefix_k, const std::optional<at::Tensor>& prefix_v,
                          int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t q_slot,
                          int64_t transition_dim,
                          const std::optional<at::Tensor>& key_start, at::Tensor& out,
                          const std::optional<at::Tensor>& goal_k, const std::optional<at::Tensor>& goal_v,
                          int64_t goal_group_rows, const std::optional<at::Tensor>& goal_rows);

void philox_uniform_cuda(int64_t seed, int64_t offset, at::Tensor& out);
void sample_next_cuda(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                      const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state, at::Tensor& tokens,
                      at::Tensor& expectation);
void beam_select_cuda(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                      const at::Tensor& tokens, at::Tensor& values, at::Tensor& indices, at::Tensor& rows,
                      at::Tensor& terms_out, at::Tensor& tokens_out);
void beam_expand_cuda(const at::Tensor& scores, const at::Tensor& logp, int64_t k, at::Tensor& values,
                      at::Tensor& parents, at::Tensor& tokens);

}  // namespace tt
