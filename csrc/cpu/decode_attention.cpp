// tt::decode_attention on CPU: one query per row against its group's shared prefix and its own
// cache slots, with the Trajectory Transformer mask applied by slot.
//
// Tasks are (group, head, row of the group), so a thread takes the rows of one group and head in
// a run: it transposes that prefix's keys once ([D, S], a small buffer) and scores every row's
// query against all S of them with FMAs across keys, no horizontal sums. With a prefix row table
// (row r reads prefix prefix_rows[r]) the rows are sorted by their prefix row first, and tasks are
// (prefix, head, row of those that read it), listed up front: the same runs in the same order.
// A prefix that fewer than a dozen queries of a thread's range read is scored key by key instead
// (score_keys: sixteen keys' dot products reduced together; a transposition would cost more than
// it saves: the likelihood search's rows read their lineage's or their own), and so are a row's
// own keys, few and read once. The mask is a bias row built once per key_start; exp is a
// polynomial; sums run in independent lanes or banks, so the loops vectorize and pipeline (with
// -fno-trapping-math).
// Compiled for AVX-512, AVX2 and baseline x86-64, picked at load time.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../ops.h"
#include "vector_math.h"

namespace tt {

namespace {

constexpr int64_t kChunk = 32;  // prefix keys scored at once (two AVX-512 registers)
constexpr int64_t kBanks = 4;   // independent sums in the weighted sum of values
constexpr int64_t kMaxHeadDim = 256;
// Queries that read one prefix and head in a run before its keys are transposed for them: a
// transposition costs about what scoring a dozen queries key by key (score_keys) does.
constexpr int64_t kMinTransposeReaders = 12;

inline int64_t padded_prefix(int64_t slots) { return (slots + kChunk - 1) / kChunk * kChunk; }

// Everything below `attend` is inlined into each of its per-ISA clones (TT_INLINE, vector_math.h),
// so it is compiled for that ISA.

// A [rows, heads, slots, D] view with unit stride along D.
struct View {
  const float* data = nullptr;
  int64_t row = 0, head = 0, slot = 0;
  const float* at(int64_t r, int64_t h, int64_t s) const { return data + r * row + h * head + s * slot; }
};

View view_of(const at::Tensor& t) {
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

struct Problem {
  View q, k, v, prefix_k, prefix_v, goal_k, goal_v;
  float* out;
  const int64_t* key_start;
  const int64_t* prefix_rows;  // [rows] or null: the prefix each row reads (else its group's)
  const int64_t* tasks;        // with prefix_rows: task i is row tasks[i] / heads, head tasks[i] % heads
  const int64_t* goal_rows;    // [rows] or null: the goal each row reads (else (r / goal_group_rows) % goals)
  int64_t rows, heads, dim, own_slots, prefix_slots, groups, group_rows, q_slot, transition_dim;
  int64_t goal_slots, goals, goal_group_rows;  // goal_slots = 0: no goal segment
};

// Head dims the kernel is specialized for (unrolled, in registers); others take the generic loop.
template <int64_t kDim>
struct HeadDim {
  static constexpr int64_t size(int64_t) { return kDim; }
};
struct AnyHeadDim {
  static int64_t size(int64_t dim) { return dim; }
};

template <class Dim>
TT_INLINE float dot(const float* a, const float* b, int64_t dim) {
  const int64_t n = Dim::size(dim);
  float lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[d + l] * b[d + l];
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)  // a tree, which vectorizes
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  float sum = lanes[0];
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Sixteen floats as one value (a GCC vector extension): inside each of attend's ISA clones it is
// that ISA's registers (one AVX-512 register, two AVX2 ones, four SSE ones).
typedef float Vec16 __attribute__((vector_size(64)));
typedef int32_t Lanes16 __attribute__((vector_size(64)));

TT_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Lanes 2i and 2i+1 of x summed into lane i, those of y into lane 8 + i.
TT_INLINE Vec16 pair_sums(Vec16 x, Vec16 y) {
  const Lanes16 even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const Lanes16 odd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  return __builtin_shuffle(x, y, even) + __builtin_shuffle(x, y, odd);
}

// out[j] = q . keys[j * stride, ...+D) for j < n: sixteen keys at a time, each key's products in one
// vector, the sixteen vectors summed into one by four levels of pair_sums (lane k: key k), so no
// key pays a horizontal sum of its own. Head dims that are no multiple of 16 take dot().
template <class Dim>
TT_INLINE void score_keys(const float* q, const float* keys, int64_t stride, int64_t n, float* out, int64_t dim) {
  const int64_t D = Dim::size(dim);
  if (D % 16) {
    for (int64_t j = 0; j < n; ++j) out[j] = dot<Dim>(q, keys + j * stride, D);
    return;
  }
  Vec16 qv[kMaxHeadDim / 16];
  for (int64_t c = 0; c < D / 16; ++c) qv[c] = load16(q + 16 * c);
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t block = std::min<int64_t>(16, n - j);
    Vec16 sums[16];
    for (int64_t k = 0; k < 16; ++k) {
      sums[k] = Vec16{};
      if (k < block) {
        const float* key = keys + (j + k) * stride;
        for (int64_t c = 0; c < D / 16; ++c) sums[k] += qv[c] * load16(key + 16 * c);
      }
    }
    for (int64_t width = 8; width >= 1; width /= 2)  // 16 vectors -> 8 -> 4 -> 2 -> 1
      for (int64_t k = 0; k < width; ++k) sums[k] = pair_sums(sums[2 * k], sums[2 * k + 1]);
    std::memcpy(out + j, &sums[0], block * sizeof(float));
  }
}

// The maximum of n floats in kLanes independent lanes, then a tree: a loop that vectorizes.
TT_INLINE float max_of(const float* x, int64_t n) {
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[j + l] > lanes[l] ? x[j + l] : lanes[l];
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t l = 0; l < width; ++l) lanes[l] = lanes[l + width] > lanes[l] ? lanes[l + width] : lanes[l];
  float m = lanes[0];
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// acc[0, D) += sum over n slots of weights[j] * values[j * stride, ...+D), in kBanks independent
// sums so that consecutive FMAs do not wait on each other.
template <class Dim>
TT_INLINE void add_values(const float* weights, const float* values, int64_t stride, int64_t n, float* acc,
                          int64_t dim) {
  const int64_t D = Dim::size(dim);
  float banks[kBanks][kMaxHeadDim];
  for (int64_t b = 0; b < kBanks; ++b)
    for (int64_t d = 0; d < D; ++d) banks[b][d] = 0.f;
  int64_t j = 0;
  for (; j + kBanks <= n; j += kBanks)
    for (int64_t b = 0; b < kBanks; ++b)
      for (int64_t d = 0; d < D; ++d) banks[b][d] += weights[j + b] * values[(j + b) * stride + d];
  for (; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) banks[0][d] += weights[j] * values[j * stride + d];
  for (int64_t b = 0; b < kBanks; ++b)
    for (int64_t d = 0; d < D; ++d) acc[d] += banks[b][d];
}

// Tasks [begin, end) in (group, head, row of the group) order (with a prefix row table, as listed
// in p.tasks). `scratch` holds L scores, L mask biases (0 or -inf: the same for every row
// with the same key_start), with a prefix its keys transposed [D, S_pad], and the goal's
// scores (visible to every query: no bias).
template <class Dim>
TT_INLINE void attend_tasks(const Problem& p, int64_t begin, int64_t end, float* scratch) {
  const int64_t D = Dim::size(p.dim), S = p.prefix_slots, T = p.transition_dim, L = S + p.own_slots;
  const int64_t S_pad = padded_prefix(S), rows_per_group = p.prefix_rows ? 0 : p.rows / p.groups;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float* scores = scratch;
  float* bias = scratch + L;
  float* prefix_keys = scratch + 2 * L;  // [D, S_pad]
  float* goal_scores = prefix_keys + S_pad * D;  // [goal_slots]
  const int64_t n_goal = p.goal_slots;
  float acc[kMaxHeadDim];
  int64_t transposed = -1;  // the (group, head) whose prefix keys are in prefix_keys
  int64_t masked_for = -1;  // the key_start whose mask is in bias
  // task -> (row, prefix it reads, head): (prefix, head, row of those that read it) with a table,
  // else (group, head, row of the group)
  const auto locate = [&](int64_t task, int64_t& r, int64_t& group, int64_t& h) {
    if (p.prefix_rows) {
      r = p.tasks[task] / p.heads;
      h = p.tasks[task] % p.heads;
      group = p.prefix_rows[r];
    } else {
      const int64_t group_head = task / rows_per_group, i = task % rows_per_group;
      group = group_head / p.heads;
      h = group_head % p.heads;
      r = (i / p.group_rows) * p.groups * p.group_rows + group * p.group_rows + i % p.group_rows;
    }
  };
  for (int64_t task = begin; task < end; ++task) {
    int64_t r, group, h;
    locate(task, r, group, h);
    const int64_t group_head = group * p.heads + h;
    const int64_t start = p.key_start ? p.key_start[r] : 0;
    if (masked_for != start) {  // visible: causal, not a value token, padding only to padding (reference.attention_mask)
      const bool query_real = p.q_slot >= start;
      for (int64_t j = 0, phase = 0; j < L; ++j, phase = phase + 1 == T ? 0 : phase + 1)
        bias[j] = j <= p.q_slot && phase != T - 1 && (j >= start) == query_real ? 0.f : neg_inf;
      masked_for = start;
    }
    const float* q = p.q.at(r, h, 0);
    bool few = false;  // fewer than kMinTransposeReaders queries of this task range read this prefix and head
    if (S && transposed != group_head) {
      int64_t readers = 1, next_r = 0, next_group = -1, next_h = -1;
      for (int64_t next = task + 1; next < end && readers < kMinTransposeReaders; ++next, ++readers) {
        locate(next, next_r, next_group, next_h);
        if (next_group * p.heads + next_h != group_head) break;
      }
      few = readers < kMinTransposeReaders;
    }
    if (S && few) {  // read by few: scored key by key, where transposing would cost more than it saves
      score_keys<Dim>(q, p.prefix_k.at(group, h, 0), p.prefix_k.slot, S, scores, D);
    } else if (S) {  // against the prefix: FMAs across keys of the transposed keys
      if (transposed != group_head) {  // [D, S_pad]: keys in columns, zero-padded to whole chunks
        const float* key = p.prefix_k.at(group, h, 0);
        for (int64_t j = 0; j < S_pad; ++j, key += p.prefix_k.slot)
          for (int64_t d = 0; d < D; ++d) prefix_keys[d * S_pad + j] = j < S ? key[d] : 0.f;
        transposed = group_head;
      }
      for (int64_t chunk = 0; chunk < S_pad; chunk += kChunk) {  // kChunk scores stay in registers over d,
        float even[kChunk] = {}, odd[kChunk] = {};                // in two independent sums
        for (int64_t d = 0; d + 1 < D; d += 2) {
          const float* keys = prefix_keys + d * S_pad + chunk;
          for (int64_t l = 0; l < kChunk; ++l) even[l] += q[d] * keys[l];
          for (int64_t l = 0; l < kChunk; ++l) odd[l] += q[d + 1] * keys[S_pad + l];
        }
        if (D % 2)
          for (int64_t l = 0; l < kChunk; ++l) even[l] += q[D - 1] * prefix_keys[(D - 1) * S_pad + chunk + l];
        for (int64_t l = 0; l < kChunk && chunk + l < S; ++l) scores[chunk + l] = even[l] + odd[l];
      }
    }
    score_keys<Dim>(q, p.k.at(r, h, 0), p.k.slot, L - S, scores + S, D);
    for (int64_t j = 0; j < L; ++j) scores[j] = scores[j] * scale + bias[j];
    int64_t goal = 0;
    if (n_goal) {  // the goal's keys: few, always visible
      goal = p.goal_rows ? p.goal_rows[r] : (r / p.goal_group_rows) % p.goals;
      score_keys<Dim>(q, p.goal_k.at(goal, h, 0), p.goal_k.slot, n_goal, goal_scores, D);
      for (int64_t j = 0; j < n_goal; ++j) goal_scores[j] *= scale;
    }

    for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
    float total = 0.f;
    const float max_window = max_of(scores, L), max_goal = n_goal ? max_of(goal_scores, n_goal) : neg_inf;
    const float max_score = max_goal > max_window ? max_goal : max_window;
    if (max_score != neg_inf) {
      for (int64_t j = 0; j < L; ++j) scores[j] = exp_nonpositive(scores[j] - max_score);
      total = sum_of(scores, L);
      if (n_goal) {
        for (int64_t j = 0; j < n_goal; ++j) goal_scores[j] = exp_nonpositive(goal_scores[j] - max_score);
        total += sum_of(goal_scores, n_goal);
        add_values<Dim>(goal_scores, p.goal_v.at(goal, h, 0), p.goal_v.slot, n_goal, acc, D);
      }
      if (S) add_values<Dim>(scores, p.prefix_v.at(group, h, 0), p.prefix_v.slot, S, acc, D);
      add_values<Dim>(scores + S, p.v.at(r, h, 0), p.v.slot, L - S, acc, D);
    }
    float* out = p.out + (r * p.heads + h) * D;
    const float norm = total > 0.f ? 1.0f / total : 0.f;  // no visible key: zeros, as SDPA on CPU
    for (int64_t d = 0; d < D; ++d) out[d] = acc[d] * norm;
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void attend(const Problem& p, int64_t begin, int64_t end) {
  std::vector<float> scratch(2 * (p.prefix_slots + p.own_slots) + padded_prefix(p.prefix_slots) * p.dim +
                             p.goal_slots);
  switch (p.dim) {
    case 16: return attend_tasks<HeadDim<16>>(p, begin, end, scratch.data());
    case 32: return attend_tasks<HeadDim<32>>(p, begin, end, scratch.data());
    case 64: return attend_tasks<HeadDim<64>>(p, begin, end, scratch.data());
    default: return attend_tasks<AnyHeadDim>(p, begin, end, scratch.data());
  }
}

}  // namespace

void decode_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& prefix_k, const std::optional<at::Tensor>& prefix_v,
                          int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t q_slot,
                          int64_t transition_dim, const std::optional<at::Tensor>& key_start, at::Tensor& out,
                          const std::optional<at::Tensor>& goal_k, const std::optional<at::Tensor>& goal_v,
                          int64_t goal_group_rows, const std::optional<at::Tensor>& goal_rows) {
  check_decode_attention(q, k, v, prefix_k, prefix_v, group_rows, prefix_rows, q_slot, transition_dim, key_start,
                         out, goal_k, goal_v, goal_group_rows, goal_rows);
  TORCH_CHECK(q.scalar_type() == at::kFloat, "tt::decode_attention: the CPU kernel takes float32, got ",
              q.scalar_type());
  TORCH_CHECK(q.size(2) <= kMaxHeadDim, "tt::decode_attention: head dim ", q.size(2), " > ", kMaxHeadDim);
  const bool has_prefix = prefix_k.has_value();
  Problem p;
  p.q = {q.data_ptr<float>(), q.stride(0), q.stride(1), 0};
  p.k = view_of(k);
  p.v = view_of(v);
  if (has_prefix) {
    p.prefix_k = view_of(*prefix_k);
    p.prefix_v = view_of(*prefix_v);
  }
  p.out = out.data_ptr<float>();
  p.key_start = key_start.has_value() ? key_start->data_ptr<int64_t>() : nullptr;
  p.prefix_rows = nullptr;
  p.tasks = nullptr;
  std::vector<int64_t> order, tasks;
  if (has_prefix && prefix_rows.has_value()) {  // rows that read one prefix next to each other
    const int64_t R = q.size(0), H = q.size(1);
    const int64_t* table = prefix_rows->data_ptr<int64_t>();
    p.prefix_rows = table;
    order.resize(R);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return table[a] < table[b]; });
    tasks.reserve(R * H);
    for (int64_t begin = 0, end = 0; begin < R; begin = end) {  // a run of rows reading one prefix
      while (end < R && table[order[end]] == table[order[begin]]) ++end;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = begin; i < end; ++i) tasks.push_back(order[i] * H + h);
    }
    p.tasks = tasks.data();
  }
  p.rows = q.size(0);
  p.heads = q.size(1);
  p.dim = q.size(2);
  p.own_slots = k.size(2);
  p.prefix_slots = has_prefix ? prefix_k->size(2) : 0;
  p.groups = has_prefix ? prefix_k->size(0) : 1;
  p.group_rows = has_prefix ? group_rows : p.rows;
  p.q_slot = q_slot;
  p.transition_dim = transition_dim;
  const bool has_goal = goal_k.has_value();
  if (has_goal) {
    p.goal_k = view_of(*goal_k);
    p.goal_v = view_of(*goal_v);
  }
  p.goal_rows = has_goal && goal_rows.has_value() ? goal_rows->data_ptr<int64_t>() : nullptr;
  p.goal_slots = has_goal ? goal_k->size(2) : 0;
  p.goals = has_goal ? goal_k->size(0) : 1;
  p.goal_group_rows = has_goal ? goal_group_rows : 1;
  at::parallel_for(0, p.rows * p.heads, 16, [&](int64_t begin, int64_t end) { attend(p, begin, end); });
}

}  // namespace tt
