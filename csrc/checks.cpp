// Argument checks shared by the CPU and CUDA implementations: every op validates its inputs here
// before any kernel runs, so bad input is a clear error, never a crash inside a kernel.
#include <cmath>
#include <utility>
#include <vector>

#include "beam_expand.h"
#include "ops.h"

namespace tt {

namespace {

void check_same_device(const at::Tensor& reference, const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device() == reference.device(), op, ": ", name, " is on ", t.device(), " but the inputs are on ",
              reference.device());
}

void check_output(const at::Tensor& reference, const at::Tensor& t, const char* op, const char* name,
                  at::IntArrayRef shape) {
  check_same_device(reference, t, op, name);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// A prefix row table: which prefix row each of R rows reads. Its values are trusted to lie in
// [0, groups), as key_start's are trusted: checking them would read the table on the host.
void check_prefix_rows(const at::Tensor& reference, const at::Tensor& rows, int64_t R, const char* op,
                       const char* name = "prefix_rows") {
  check_same_device(reference, rows, op, name);
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.size(0) == R && rows.is_contiguous(), op,
              ": ", name, " must be a contiguous int64 [", R, "], got ", rows.scalar_type(), " ", rows.sizes(),
              rows.is_contiguous() ? "" : " (not contiguous)");
}

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

}  // namespace

void check_sample_next(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                       const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state,
                       const at::Tensor& tokens, const at::Tensor& expectation) {
  const char* op = "tt::sample_next";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [rows, N+1], got ", logits.sizes());
  TORCH_CHECK(is_float(logits), op, ": logits must be float32, float64, float16 or bfloat16, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.is_contiguous(), op, ": logits must be contiguous");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab >= 2, op, ": logits need at least 2 columns (bins and the stop token), got ", vocab);
  TORCH_CHECK(temperature > 0, op, ": temperature must be > 0, got ", temperature);
  TORCH_CHECK(top_k <= vocab, op, ": top_k must be <= ", vocab, ", got ", top_k);
  TORCH_CHECK(cdf <= 1.0, op, ": cdf must be <= 1, got ", cdf);
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.numel() == 2 && rng_state.is_contiguous(), op,
              ": rng_state must be a contiguous int64 tensor (seed, offset)");
  check_same_device(logits, rng_state, op, "rng_state");
  check_output(logits, tokens, op, "tokens", {rows});
  TORCH_CHECK(tokens.scalar_type() == at::kLong, op, ": tokens must be int64");
  if (midpoints.has_value()) {
    const at::Tensor& mids = *midpoints;
    check_same_device(logits, mids, op, "midpoints");
    TORCH_CHECK(mids.dim() == 1 && mids.size(0) == vocab - 1 && mids.is_contiguous(), op,
                ": midpoints must be a contiguous [", vocab - 1, "] tensor, got ", mids.sizes());
    TORCH_CHECK(mids.scalar_type() == at::kFloat || mids.scalar_type() == at::kDouble, op,
                ": midpoints must be float32 or float64");
    check_output(logits, expectation, op, "expectation", {rows});
    TORCH_CHECK(expectation.scalar_type() == at::kFloat || expectation.scalar_type() == at::kDouble, op,
                ": expectation must be float32 or float64");
  }
}

void check_beam_select(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                       const at::Tensor& tokens, const at::Tensor& values, const at::Tensor& indices,
                       const at::Tensor& rows, const at::Tensor& terms_out, const at::Tensor& tokens_out) {
  const char* op = "tt::beam_select";
  TORCH_CHECK(scores.dim() == 2, op, ": scores must be [B, M], got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble, op,
              ": scores must be float32 or float64, got ", scores.scalar_type());
  TORCH_CHECK(scores.is_contiguous(), op, ": scores must be contiguous");
  const int64_t B = scores.size(0), M = scores.size(1);
  TORCH_CHECK(k >= 1 && k <= M, op, ": k must be in [1, ", M, "], got ", k);
  TORCH_CHECK(group >= 1 && M % group == 0, op, ": group ", group, " must divide the ", M, " candidates");
  TORCH_CHECK(M <= 4096, op, ": at most 4096 candidates per plan, got ", M);
  for (const auto* t : {&terms, &tokens}) {
    check_same_device(scores, *t, op, t == &terms ? "terms" : "tokens");
    TORCH_CHECK(t->dim() == 2 && t->size(0) == B * M && t->is_contiguous(), op, ": ",
                t == &terms ? "terms" : "tokens", " must be contiguous [B*M=", B * M, ", n], got ", t->sizes());
  }
  TORCH_CHECK(is_float(terms), op, ": terms must be floating point");
  TORCH_CHECK(tokens.scalar_type() == at::kLong, op, ": tokens must be int64");
  check_output(scores, values, op, "values", {B, k});
  TORCH_CHECK(values.scalar_type() == scores.scalar_type(), op, ": values must have the dtype of scores");
  check_output(scores, indices, op, "indices", {B, k});
  check_output(scores, rows, op, "rows", {B * k});
  TORCH_CHECK(indices.scalar_type() == at::kLong && rows.scalar_type() == at::kLong, op,
              ": indices and rows must be int64");
  check_output(scores, terms_out, op, "terms_out", {B * k, terms.size(1)});
  TORCH_CHECK(terms_out.scalar_type() == terms.scalar_type(), op, ": terms_out must have the dtype of terms");
  check_output(scores, tokens_out, op, "tokens_out", {B * k, tokens.size(1)});
  TORCH_CHECK(tokens_out.scalar_type() == at::kLong, op, ": tokens_out must be int64");
}

void check_beam_expand(const at::Tensor& scores, const at::Tensor& logp, int64_t k, const at::Tensor& values,
                       const at::Tensor& parents, const at::Tensor& tokens) {
  const char* op = "tt::beam_expand";
  TORCH_CHECK(scores.dim() == 2, op, ": scores must be [B, W], got ", scores.sizes());
  TORCH_CHECK(logp.dim() == 2, op, ": logp must be [B*W, V], got ", logp.sizes());
  for (const auto& [t, name] : {std::pair{&scores, "scores"}, std::pair{&logp, "logp"}}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
  check_same_device(scores, logp, op, "logp");
  const int64_t B = scores.size(0), W = scores.size(1), V = logp.size(1);
  TORCH_CHECK(logp.size(0) == B * W, op, ": logp must have B*W=", B * W, " rows (one per beam), got ", logp.size(0));
  TORCH_CHECK(W * V <= kBeamExpandMaxCandidates, op, ": at most ", kBeamExpandMaxCandidates,
              " candidates per plan, got W*V=", W * V);
  TORCH_CHECK(k >= 1 && k <= W * V, op, ": k must be in [1, W*V=", W * V, "], got ", k);
  check_output(scores, values, op, "values", {B, k});
  TORCH_CHECK(values.scalar_type() == at::kFloat, op, ": values must be float32");
  check_output(scores, parents, op, "parents", {B, k});
  check_output(scores, tokens, op, "tokens", {B, k});
  TORCH_CHECK(parents.scalar_type() == at::kLong && tokens.scalar_type() == at::kLong, op,
              ": parents and tokens must be int64");
}

void check_log_probs(const at::Tensor& logits, double temperature, int64_t top_k, double cdf, const at::Tensor& out) {
  const char* op = "tt::log_probs";
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be [rows, N+1], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, op,
              ": logits must be float32 or float64 (tt.ops.log_probs upcasts float16 and bfloat16), got ",
              logits.scalar_type());
  TORCH_CHECK(logits.is_contiguous(), op, ": logits must be contiguous");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(vocab >= 2, op, ": logits need at least 2 columns (bins and the stop token), got ", vocab);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), op, ": temperature must be > 0 and finite, got ",
              temperature);
  TORCH_CHECK(top_k <= vocab, op, ": top_k must be <= ", vocab, ", got ", top_k);
  TORCH_CHECK(cdf <= 1.0, op, ": cdf must be <= 1, got ", cdf);
  check_output(logits, out, op, "out", {rows, vocab});
  TORCH_CHECK(out.scalar_type() == logits.scalar_type(), op, ": out must have the dtype of logits (",
              logits.scalar_type(), "), got ", out.scalar_type());
}

void check_philox_uniform(const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == at::kDouble && out.dim() == 1 && out.is_contiguous(),
              "tt::philox_uniform: out must be a contiguous float64 vector");
}

void check_dropout_mask(double p, const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.is_cpu(),
              "tt::dropout_mask: mask must be a contiguous bool tensor on the CPU");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "tt::dropout_mask: the drop rate p must be in [0, 1), got ", p);
}

void check_dropout_apply(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& out) {
  TORCH_CHECK(x.is_cpu() && x.is_contiguous() && x.is_floating_point(),
              "tt::dropout_apply: x must be a contiguous floating-point tensor on the CPU");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.sizes() == x.sizes(),
              "tt::dropout_apply: mask must be a contiguous bool tensor of x's shape ", x.sizes(), ", got ",
              mask.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.is_contiguous() && out.sizes() == x.sizes() && out.is_cpu(),
              "tt::dropout_apply: out must be a contiguous tensor of x's dtype and shape");
}

void check_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& prefix_k, const std::optional<at::Tensor>& prefix_v,
                            int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t q_slot,
                            int64_t transition_dim, const std::optional<at::Tensor>& key_start,
                            const at::Tensor& out, const std::optional<at::Tensor>& goal_k,
                            const std::optional<at::Tensor>& goal_v, int64_t goal_group_rows,
                            const std::optional<at::Tensor>& goal_rows) {
  const char* op = "tt::decode_attention";
  TORCH_CHECK(q.dim() == 3, op, ": q must be [R, h, D] (one query per row), got ", q.sizes());
  TORCH_CHECK(is_float(q), op, ": q must be floating point, got ", q.scalar_type());
  const int64_t R = q.size(0), h = q.size(1), D = q.size(2);
  TORCH_CHECK(transition_dim >= 1, op, ": transition_dim must be >= 1, got ", transition_dim);
  TORCH_CHECK(q.stride(2) == 1, op, ": q must have unit stride along D");
  TORCH_CHECK(prefix_k.has_value() == prefix_v.has_value(), op, ": give both prefix_k and prefix_v, or neither");
  int64_t S = 0;
  std::vector<std::pair<const at::Tensor*, const char*>> kv = {{&k, "k"}, {&v, "v"}};
  if (prefix_k.has_value()) {
    kv.push_back({&*prefix_k, "prefix_k"});
    kv.push_back({&*prefix_v, "prefix_v"});
    const int64_t G = prefix_k->size(0);
    S = prefix_k->size(2);
    TORCH_CHECK(prefix_k->sizes() == prefix_v->sizes(), op, ": prefix_k ", prefix_k->sizes(), " and prefix_v ",
                prefix_v->sizes(), " differ");
    if (prefix_rows.has_value()) {  // a table: any number of rows, values trusted (as key_start's)
      TORCH_CHECK(G >= 1, op, ": an empty prefix_k");
      check_prefix_rows(q, *prefix_rows, R, op);
    } else {
      TORCH_CHECK(G >= 1 && group_rows >= 1 && R % (G * group_rows) == 0, op, ": ", R,
                  " rows are not whole blocks of ", G, " groups x ", group_rows, " rows");
    }
  } else {
    TORCH_CHECK(!prefix_rows.has_value(), op, ": prefix_rows given without a prefix (prefix_k, prefix_v)");
  }
  TORCH_CHECK(goal_k.has_value() == goal_v.has_value(), op, ": give both goal_k and goal_v, or neither");
  if (goal_k.has_value()) {
    kv.push_back({&*goal_k, "goal_k"});
    kv.push_back({&*goal_v, "goal_v"});
    TORCH_CHECK(goal_k->sizes() == goal_v->sizes(), op, ": goal_k ", goal_k->sizes(), " and goal_v ",
                goal_v->sizes(), " differ");
    TORCH_CHECK(goal_k->dim() == 4 && goal_k->size(0) >= 1 && goal_k->size(2) >= 1, op,
                ": goal_k must be [G, h, O, D] with G, O >= 1, got ", goal_k->sizes());
    if (goal_rows.has_value()) {  // a table: values trusted (as prefix_rows')
      check_prefix_rows(q, *goal_rows, R, op, "goal_rows");
    } else {
      TORCH_CHECK(goal_group_rows >= 1, op, ": goal_group_rows must be >= 1, got ", goal_group_rows);
    }
  } else {
    TORCH_CHECK(!goal_rows.has_value(), op, ": goal_rows given without a goal (goal_k, goal_v)");
  }
  for (const auto& [t, name] : kv) {
    check_same_device(q, *t, op, name);
    TORCH_CHECK(t->dim() == 4 && t->size(1) == h && t->size(3) == D, op, ": ", name, " must be [rows, ", h,
                ", slots, ", D, "], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), op, ": ", name, " must have the dtype of q");
    TORCH_CHECK(t->stride(3) == 1, op, ": ", name, " must have unit stride along D");
  }
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == R, op, ": k ", k.sizes(), " and v ", v.sizes(),
              " must both be [", R, ", ", h, ", n, ", D, "]");
  TORCH_CHECK(q_slot >= S && q_slot < S + k.size(2), op, ": the query slot ", q_slot, " must be one of the row's own ",
              "slots [", S, ", ", S + k.size(2), ")");
  if (key_start.has_value()) {
    check_same_device(q, *key_start, op, "key_start");
    TORCH_CHECK(key_start->scalar_type() == at::kLong && key_start->dim() == 1 && key_start->size(0) == R &&
                    key_start->is_contiguous(),
                op, ": key_start must be a contiguous int64 [", R, "]");
  }
  check_output(q, out, op, "out", {R, h, D});
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), op, ": out must have the dtype of q");
}

void check_decode_layers(const at::Tensor& x, at::TensorList weights, const at::Tensor& cache_k,
                         const at::Tensor& cache_v, int64_t n_head, int64_t slot, int64_t shared, int64_t groups,
                         int64_t group_rows, const std::optional<at::Tensor>& prefix_rows,
                         const std::optional<at::Tensor>& goal_k, const std::optional<at::Tensor>& goal_v) {
  const char* op = "tt::decode_layers";
  TORCH_CHECK((x.dim() == 2 || (x.dim() == 3 && x.size(1) >= 1)) && x.is_contiguous(), op,
              ": x must be a contiguous [R, C] or [R, L, C] (L >= 1), got ", x.sizes());
  const int64_t R = x.size(0), L = x.dim() == 3 ? x.size(1) : 1, C = x.size(-1);
  TORCH_CHECK(n_head >= 1 && C % n_head == 0, op, ": ", C, " channels are not a multiple of ", n_head, " heads");
  TORCH_CHECK(cache_k.dim() == 5 && cache_k.sizes() == cache_v.sizes(), op,
              ": cache_k and cache_v must both be [n_layer, rows, heads, len, D], got ", cache_k.sizes(), ", ",
              cache_v.sizes());
  const int64_t n_layer = cache_k.size(0);
  TORCH_CHECK(n_layer >= 1, op, ": the cache holds no layers");
  TORCH_CHECK(cache_k.size(2) == n_head && cache_k.size(4) == C / n_head, op, ": the cache holds ", cache_k.size(2),
              " heads of ", cache_k.size(4), ", the model ", n_head, " of ", C / n_head);
  TORCH_CHECK(cache_k.stride(4) == 1 && cache_v.stride(4) == 1, op, ": the cache must have unit stride along D");
  TORCH_CHECK(shared >= 0, op, ": shared must be >= 0, got ", shared);
  TORCH_CHECK(shared == 0 || prefix_rows.has_value() || group_rows >= 1, op, ": group_rows must be >= 1, got ",
              group_rows);
  TORCH_CHECK(R <= cache_k.size(1) && slot >= shared && slot + L <= cache_k.size(3), op, ": ", R, " rows of ", L,
              " tokens at slot ", slot, " (after ", shared, " shared) do not fit a cache of ", cache_k.size(1),
              " rows x ", cache_k.size(3), " slots");
  TORCH_CHECK(shared == 0 || (groups >= 1 && groups <= cache_k.size(1)), op, ": ", groups, " groups");
  if (prefix_rows.has_value()) {
    TORCH_CHECK(shared > 0, op, ": prefix_rows given without a shared prefix (shared = 0)");
    check_prefix_rows(x, *prefix_rows, R, op);
  }
  TORCH_CHECK(goal_k.has_value() == goal_v.has_value(), op, ": give both goal_k and goal_v, or neither");
  if (goal_k.has_value()) {  // per layer, checked by decode_attention
    TORCH_CHECK(goal_k->dim() == 5 && goal_k->sizes() == goal_v->sizes() && goal_k->size(0) == n_layer &&
                    goal_k->size(1) >= 1,
                op, ": goal_k and goal_v must both be [", n_layer, ", G >= 1, heads, O, D], got ", goal_k->sizes(),
                ", ", goal_v->sizes());
  }
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == n_layer * kWeightsPerLayer, op, ": expected ",
              n_layer * kWeightsPerLayer, " weights (", kWeightsPerLayer, " per block), got ", weights.size());
  for (const auto* t : {&cache_k, &cache_v}) {
    check_same_device(x, *t, op, "the cache");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": the cache must have the dtype of x");
  }
  for (const at::Tensor& w : weights) {
    check_same_device(x, w, op, "a weight");
    TORCH_CHECK(w.scalar_type() == x.scalar_type(), op, ": weights must have the dtype of x, got ", w.scalar_type());
  }
  for (int64_t l = 0; l < n_layer; ++l) {
    const at::Tensor* w = weights.data() + l * kWeightsPerLayer;
    const int64_t hidden = w[kFcWeight].size(0);
    const std::vector<std::vector<int64_t>> shapes = {{C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {C}, {C},
                                                      {hidden, C}, {hidden}, {C, hidden}, {C}};
    for (int64_t i = 0; i < kWeightsPerLayer; ++i)
      TORCH_CHECK(w[i].sizes() == at::IntArrayRef(shapes[i]), op, ": weight ", i, " of block ", l, " must be ",
                  at::IntArrayRef(shapes[i]), ", got ", w[i].sizes());
  }
  (void)group_rows;  // checked by decode_attention (rows per group, unless prefix_rows is given)
}

}  // namespace tt
