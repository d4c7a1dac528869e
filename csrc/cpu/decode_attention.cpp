// tt::decode_attention on CPU: one query per row against its group's shared prefix and its own
// cache slots, with the Trajectory Transformer mask applied by slot.
//
// Tasks are (group, head, row of the group), so a thread takes the rows of one group and head in
// a run: it transposes that prefix's keys once ([D, S], a small buffer) and scores every row's
// query against all S of them with FMAs across keys, no horizontal sums. A row's own keys are
// few and read once. Compiled for AVX-512, AVX2 and baseline x86-64, picked at load time.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../ops.h"

namespace tt {

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kMaxHeadDim = 256;

// Everything below `attend` is inlined into each of its per-ISA clones, so it is compiled for that ISA.
#if defined(__GNUC__)
#define TT_INLINE inline __attribute__((always_inline))
#else
#define TT_INLINE inline
#endif

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
  View q, k, v, prefix_k, prefix_v;
  float* out;
  const int64_t* key_start;
  int64_t rows, heads, dim, own_slots, prefix_slots, groups, group_rows, q_slot, transition_dim;
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

// exp(x) for x <= 0 to ~1 ulp (range reduction by ln 2, Cephes' expf polynomial), branch free so
// that a loop over it vectorizes; x < -87 (and -inf) gives 0.
TT_INLINE float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  const float n = std::floor(clamped * 1.44269504088896341f + 0.5f);
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

// Tasks [begin, end) in (group, head, row of the group) order; `scratch` holds L scores and, with
// a prefix, its keys transposed [D, S].
template <class Dim>
TT_INLINE void attend_tasks(const Problem& p, int64_t begin, int64_t end, float* scratch) {
  const int64_t D = Dim::size(p.dim), S = p.prefix_slots, T = p.transition_dim, L = S + p.own_slots;
  const int64_t rows_per_group = p.rows / p.groups;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float* scores = scratch;
  float* prefix_keys = scratch + L;  // [D, S]
  float acc[kMaxHeadDim];
  int64_t transposed = -1;  // the (group, head) whose prefix keys are in prefix_keys
  for (int64_t task = begin; task < end; ++task) {
    const int64_t group_head = task / rows_per_group, i = task % rows_per_group;
    const int64_t group = group_head / p.heads, h = group_head % p.heads;
    const int64_t r = (i / p.group_rows) * p.groups * p.group_rows + group * p.group_rows + i % p.group_rows;
    const int64_t start = p.key_start ? p.key_start[r] : 0;
    const bool query_real = p.q_slot >= start;
    const float* q = p.q.at(r, h, 0);
    float max_score = neg_inf;
    // visible: causal, not a value token, padding only to padding (see reference.attention_mask)
    auto mask = [&](int64_t j, int64_t phase, float s) {
      const bool visible = j <= p.q_slot && phase != T - 1 && (j >= start) == query_real;
      s = visible ? s * scale : neg_inf;
      max_score = s > max_score ? s : max_score;
      return s;
    };
    if (S) {
      if (transposed != group_head) {
        const float* key = p.prefix_k.at(group, h, 0);
        for (int64_t j = 0; j < S; ++j, key += p.prefix_k.slot)
          for (int64_t d = 0; d < D; ++d) prefix_keys[d * S + j] = key[d];
        transposed = group_head;
      }
      for (int64_t j = 0; j < S; ++j) scores[j] = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = q[d];
        const float* keys = prefix_keys + d * S;
        for (int64_t j = 0; j < S; ++j) scores[j] += qd * keys[j];
      }
      for (int64_t j = 0, phase = 0; j < S; ++j, phase = phase + 1 == T ? 0 : phase + 1)
        scores[j] = mask(j, phase, scores[j]);
    }
    const float* key = p.k.at(r, h, 0);
    for (int64_t j = S, phase = S % T; j < L; ++j, key += p.k.slot, phase = phase + 1 == T ? 0 : phase + 1)
      scores[j] = mask(j, phase, dot<Dim>(q, key, D));

    for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;
    float total = 0.f;
    if (max_score != neg_inf) {
      for (int64_t j = 0; j < L; ++j) scores[j] = exp_nonpositive(scores[j] - max_score);
      const float* value = S ? p.prefix_v.at(group, h, 0) : nullptr;
      for (int64_t j = 0; j < L; ++j) {
        if (j == S) value = p.v.at(r, h, 0);
        const float w = scores[j];
        if (w != 0.f) {
          total += w;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * value[d];
        }
        value += j < S ? p.prefix_v.slot : p.v.slot;
      }
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
  std::vector<float> scratch(p.prefix_slots + p.own_slots + p.prefix_slots * p.dim);
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
                          int64_t group_rows, int64_t q_slot, int64_t transition_dim,
                          const std::optional<at::Tensor>& key_start, at::Tensor& out) {
  check_decode_attention(q, k, v, prefix_k, prefix_v, group_rows, q_slot, transition_dim, key_start, out);
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
  p.rows = q.size(0);
  p.heads = q.size(1);
  p.dim = q.size(2);
  p.own_slots = k.size(2);
  p.prefix_slots = has_prefix ? prefix_k->size(2) : 0;
  p.groups = has_prefix ? prefix_k->size(0) : 1;
  p.group_rows = has_prefix ? group_rows : p.rows;
  p.q_slot = q_slot;
  p.transition_dim = transition_dim;
  at::parallel_for(0, p.rows * p.heads, 16, [&](int64_t begin, int64_t end) { attend(p, begin, end); });
}

}  // namespace tt
