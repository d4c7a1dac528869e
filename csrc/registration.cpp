// The tt op library: one schema per op, CPU implementations; CUDA ones register in csrc/cuda.
// Outputs are preallocated by the caller and written in place (Tensor!), so the ops work
// under CUDA graph capture; fake implementations live in tt/ops/dispatch.py.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(tt, m) {
  // One token per row of logits [R, N+1]: temperature, cdf filter, top-k filter, softmax, draw
  // (Philox at rng_state = (seed, offset)); expectation [R] of midpoints [N] under the raw
  // probabilities without the stop token when midpoints are given. top_k <= 0 / cdf < 0: off.
  m.def(
      "sample_next(Tensor logits, float temperature, int top_k, float cdf, Tensor? midpoints, "
      "Tensor rng_state, Tensor(a!) tokens, Tensor(b!) expectation) -> ()");
  // Top-k of each row of scores [B, M], descending, ties to the lower index; candidate m of
  // plan b lives in row (m / group) * B * group + b * group + m % group of terms / tokens, whose
  // survivors' rows are gathered into terms_out / tokens_out [B * k, ...]; rows [B * k] says where from.
  m.def(
      "beam_select(Tensor scores, int k, int group, Tensor terms, Tensor tokens, Tensor(a!) values, "
      "Tensor(b!) indices, Tensor(c!) rows, Tensor(d!) terms_out, Tensor(e!) tokens_out) -> ()");
  // The likelihood search's batched top-k: candidate c = w * V + v of plan b scores
  // scores[b, w] + logp[b * W + w, v] (float32); the k best per plan, descending, ties to the lower c,
  // NaN last, into values [B, k] and their beam (parents) and token (tokens) [B, k].
  m.def(
      "beam_expand(Tensor scores, Tensor logp, int k, Tensor(a!) values, Tensor(b!) parents, Tensor(c!) tokens) "
      "-> ()");
  // The likelihood search's filtered log-probabilities of logits [R, N+1] (float32 or float64) into out
  // (same shape and dtype): temperature, NaN as -inf, the cdf filter (-1000), top-k (-inf), log-softmax
  // with infinities defined (tt/reference.py log_probs). top_k <= 0 / cdf < 0: off.
  m.def("log_probs(Tensor logits, float temperature, int top_k, float cdf, Tensor(a!) out) -> ()");
  // The uniforms [n] (float64) that sample_next draws for rows 0..n-1 at (seed, offset): the shared
  // generator, exposed so tests can hold the CPU and CUDA paths against each other and Python.
  m.def("philox_uniform(int seed, int offset, Tensor(a!) out) -> ()");
  // Training's dropout on the CPU: mask (bool, any shape) keeps element i unless Philox's word i at
  // (seed, offset) falls below p * 2^32 (0 <= p < 1); out = x * scale where mask, else x * 0 (as torch).
  m.def("dropout_mask(int seed, int offset, float p, Tensor(a!) mask) -> ()");
  m.def("dropout_apply(Tensor x, Tensor mask, float scale, Tensor(a!) out) -> ()");
  // One query per row q [R, h, D] at window slot q_slot against the row's keys k, v [R, h, n, D]
  // (slots S..S+n-1) after its group's shared prefix prefix_k, prefix_v [G, h, S, D] (row r reads
  // group (r / group_rows) % G, or prefix_rows[r] when that int64 [R] table is given: its values,
  // like key_start's, are trusted to lie in [0, G); none: S = 0), with the TT mask (causal, no
  // value tokens, left padding before key_start [R]); out [R, h, D]. A goal segment goal_k, goal_v
  // [G', h, O, D] (a goal-conditioned model's goal keys) is visible to every query, softmax over
  // the union: row r reads goal goal_rows[r] or (r / goal_group_rows) % G'. Inputs may be strided
  // views with unit stride in D.
  m.def(
      "decode_attention(Tensor q, Tensor k, Tensor v, Tensor? prefix_k, Tensor? prefix_v, int group_rows, "
      "Tensor? prefix_rows, int q_slot, int transition_dim, Tensor? key_start, Tensor(a!) out, "
      "Tensor? goal_k=None, Tensor? goal_v=None, int goal_group_rows=1, Tensor? goal_rows=None) -> ()");
  // The transformer blocks of one decode step: x [R, C] (embedded tokens at window slot `slot`) or
  // [R, L, C] (L tokens per row at slots slot..slot+L-1, of which the last one's output is returned),
  // weights (12 per block, see ops.h), the cache's keys and values [n_layer, rows, h, len, D] (this
  // step's K/V are written from `slot` on, the first `shared` slots of rows 0..groups-1 are the prefixes,
  // read per group of rows or by the table prefix_rows [R], as in decode_attention; the goal segment
  // goal_k, goal_v [n_layer, G', h, O, D] as decode_attention reads it; packed: decode_pack's output
  // for these weights, or none). Returns the residual stream after the last block [R, C].
  m.def(
      "decode_layers(Tensor x, Tensor[] weights, Tensor(a!) cache_k, Tensor(b!) cache_v, int n_head, int slot, "
      "int shared, int groups, int group_rows, Tensor? prefix_rows, int transition_dim, Tensor? key_start, "
      "Tensor? goal_k=None, Tensor? goal_v=None, int goal_group_rows=1, Tensor? goal_rows=None, "
      "Tensor[]? packed=None) -> Tensor");
  // The blocks' GEMM weights (weights as decode_layers takes them) packed for the row chunks that
  // decode_layers splits `rows` rows into (MKL's packed GEMM operands, one uint8 buffer per weight),
  // then an int64 record of those chunks' rows and each weight's address and version (decode_layers
  // refuses the buffers for other or changed weights); empty where packing is unavailable or does not pay.
  m.def("decode_pack(Tensor[] weights, int rows) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(tt, CPU, m) {
  m.impl("sample_next", &tt::sample_next_cpu);
  m.impl("beam_select", &tt::beam_select_cpu);
  m.impl("beam_expand", &tt::beam_expand_cpu);
  m.impl("log_probs", &tt::log_probs_cpu);
  m.impl("philox_uniform", &tt::philox_uniform_cpu);
  m.impl("dropout_mask", &tt::dropout_mask_cpu);
  m.impl("dropout_apply", &tt::dropout_apply_cpu);
  m.impl("decode_attention", &tt::decode_attention_cpu);
  m.impl("decode_layers", &tt::decode_layers_cpu);
  m.impl("decode_pack", &tt::decode_pack_cpu);
}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "tt ops (registered with torch.ops.tt)", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
