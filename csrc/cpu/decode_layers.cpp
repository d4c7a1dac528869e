// tt::decode_layers on CPU: the transformer blocks of one decode step (one new token per row),
// as tt.model.Block runs them, in one call. A decode step is a few hundred small ATen calls;
// from Python each costs microseconds of interpreter and dispatch time, which at planner sizes
// is about half of the step. Here the same ATen ops run in the same order (so the result is the
// Python path's, bit for bit), with the K/V written to the cache and attention on decode_attention
// (with a goal-conditioned model's goal segment, goal_k / goal_v [n_layer, G, h, O, D], when given).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>

#include "../ops.h"

namespace tt {

namespace {

constexpr int64_t kMinChunkRows = 8;  // rows below which splitting a step over threads costs more than it saves

// Row r of `rows` reads entry (r / group_rows) % entries: the implicit prefix or goal mapping as an
// explicit table, so that a chunk of rows can read its part of it.
at::Tensor group_table(int64_t rows, int64_t group_rows, int64_t entries) {
  at::Tensor table = at::empty({rows}, at::kLong);
  int64_t* t = table.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) t[r] = r / group_rows % entries;
  return table;
}

std::optional<at::Tensor> rows_of(const std::optional<at::Tensor>& t, int64_t begin, int64_t n) {
  return t.has_value() ? std::optional<at::Tensor>(t->narrow(0, begin, n)) : std::nullopt;
}

}  // namespace

at::Tensor decode_layers_cpu(const at::Tensor& x, at::TensorList weights, const at::Tensor& cache_k,
                             const at::Tensor& cache_v, int64_t n_head, int64_t slot, int64_t shared, int64_t groups,
                             int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t transition_dim,
                             const std::optional<at::Tensor>& key_start, const std::optional<at::Tensor>& goal_k,
                             const std::optional<at::Tensor>& goal_v, int64_t goal_group_rows,
                             const std::optional<at::Tensor>& goal_rows) {
  check_decode_layers(x, weights, cache_k, cache_v, n_head, slot, shared, groups, group_rows, prefix_rows, goal_k,
                      goal_v);
  const int64_t R = x.size(0), C = x.size(1), D = C / n_head, n_layer = cache_k.size(0);
  // Rows are independent in a decode step: with several threads, each runs every layer for a chunk
  // of rows (one parallel region per step instead of one per op; the ATen ops inside run on their
  // chunk single-threaded, and compute every row as they would in one call).
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R / kMinChunkRows));
  std::optional<at::Tensor> table = prefix_rows, goal_table = goal_rows;
  if (chunks > 1 && shared > 0 && !table.has_value()) table = group_table(R, group_rows, groups);
  if (chunks > 1 && goal_k.has_value() && !goal_table.has_value())
    goal_table = group_table(R, goal_group_rows, goal_k->size(1));
  at::Tensor out = chunks > 1 ? at::empty_like(x) : at::Tensor();

  auto run = [&](int64_t begin, int64_t n) {
    const std::optional<at::Tensor> rows_table = rows_of(table, begin, n), rows_goal = rows_of(goal_table, begin, n);
    const std::optional<at::Tensor> rows_key_start = rows_of(key_start, begin, n);
    at::Tensor h = x.narrow(0, begin, n);
    for (int64_t l = 0; l < n_layer; ++l) {
      const at::Tensor* w = weights.data() + l * kWeightsPerLayer;
      // attention: ln1, qkv, K/V into the cache at `slot`, decode attention, proj, residual
      const at::Tensor a = at::layer_norm(h, {C}, w[0], w[1]);
      const at::Tensor qkv = at::addmm(w[3], a, w[2].t()).view({n, 3, n_head, D});
      const at::Tensor k_layer = cache_k.select(0, l).narrow(0, begin, n);
      const at::Tensor v_layer = cache_v.select(0, l).narrow(0, begin, n);
      k_layer.select(2, slot).copy_(qkv.select(1, 1));
      v_layer.select(2, slot).copy_(qkv.select(1, 2));
      std::optional<at::Tensor> prefix_k, prefix_v;
      if (shared > 0) {
        prefix_k = cache_k.select(0, l).narrow(0, 0, groups).narrow(2, 0, shared);
        prefix_v = cache_v.select(0, l).narrow(0, 0, groups).narrow(2, 0, shared);
      }
      std::optional<at::Tensor> layer_goal_k, layer_goal_v;  // the goal segment's keys and values of this layer
      if (goal_k.has_value()) {
        layer_goal_k = goal_k->select(0, l);
        layer_goal_v = goal_v->select(0, l);
      }
      at::Tensor att = at::empty({n, n_head, D}, x.options());
      decode_attention_cpu(qkv.select(1, 0), k_layer.narrow(2, shared, slot + 1 - shared),
                           v_layer.narrow(2, shared, slot + 1 - shared), prefix_k, prefix_v, group_rows, rows_table,
                           slot, transition_dim, rows_key_start, att, layer_goal_k, layer_goal_v, goal_group_rows,
                           rows_goal);
      h = h + at::addmm(w[5], att.view({n, C}), w[4].t());
      // MLP: ln2, fc, GELU, proj, residual
      const at::Tensor m = at::gelu(at::addmm(w[9], at::layer_norm(h, {C}, w[6], w[7]), w[8].t()));
      h = h + at::addmm(w[11], m, w[10].t());
    }
    return h;
  };
  if (chunks == 1) return run(0, R);
  const at::ThreadLocalState caller;  // grad mode and the like, as the calling thread has them
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard as_caller(caller);
    for (int64_t c = first; c < last; ++c) {
      const int64_t begin = R * c / chunks, end = R * (c + 1) / chunks;
      out.narrow(0, begin, end - begin).copy_(run(begin, end - begin));
    }
  });
  return out;
}

}  // namespace tt
