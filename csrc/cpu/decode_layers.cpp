// tt::decode_layers on CPU: the transformer blocks of one decode step (one new token per row, or
// a few: a prefill's, a re-encoding's), as tt.model.Block runs them, in one call. A decode step is
// a few hundred small ATen calls; from Python each costs microseconds of interpreter and dispatch
// time, which at planner sizes is about half of the step. Here each layer is four GEMMs on the BLAS
// that at::addmm calls (the bias copied in, then beta = 1, as addmm does it; on MKL's packed
// weights where decode_pack made them), a vectorized layer norm and exact-erf GELU of its own,
// residual adds and K/V writes as plain loops, and attention on decode_attention (with a
// goal-conditioned model's goal segment, goal_k / goal_v [n_layer, G, h, O, D], when given): the
// Python blocks' computation in their order, equal to theirs to float rounding (the layer norm
// and GELU round otherwise than ATen's).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <iterator>
#include <vector>

#include "../ops.h"
#include "vector_math.h"

// BLAS that libtorch_cpu exports: the Fortran GEMM at::addmm calls for float32 on CPU, and MKL's
// packed-operand GEMM where torch is built with MKL. Weak, so that a torch without them loads this
// library (and decode_layers falls back to at::addmm, decode_pack packs nothing).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace tt {

namespace {

constexpr int64_t kMinChunkRows = 8;  // rows below which splitting a step over threads costs more than it saves
// Rows from which a chunk's GEMMs run on packed weights (decode_pack): where MKL's packed GEMM pays
// (measured in benchmarks/RESULTS.md); fewer rows run the plain GEMM (packed GEMM misbehaved at 1 row).
constexpr int64_t kMinPackedRows = 16;
enum Cblas : int { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };
constexpr int64_t kLinearWeights[] = {kQkvWeight, kAttnProjWeight, kFcWeight, kMlpProjWeight};  // a block's GEMMs

// Threads a step of `rows` rows of `tokens` tokens runs on, each through every layer for its chunk of rows.
int64_t chunks_of(int64_t rows, int64_t tokens = 1) {
  return std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), rows, rows * tokens / kMinChunkRows}));
}

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

// y [n, N] = x [n, K] w [N, K]^T + b, as at::addmm(b, x, w.t()) computes it: b broadcast into y,
// then C^T = W (x)^T + C^T in column-major terms, beta = 1 (or with w packed for n rows by
// decode_pack, MKL's packed GEMM). x, w, y contiguous.
void linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor& y, const at::Tensor* packed) {
  const int64_t n = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K && y.size(0) == n && y.size(1) == N, "tt::decode_layers: a linear layer of ", w.sizes(),
              " on ", x.sizes(), " into ", y.sizes());
  if (sgemm_ == nullptr || n * N > INT32_MAX || n * K > INT32_MAX) {
    at::addmm_out(y, b, x, w.t());
    return;
  }
  float* out = y.data_ptr<float>();
  const float* bias = b.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) std::memcpy(out + r * N, bias, N * sizeof(float));
  if (packed != nullptr) {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, n, N, K, x.data_ptr<float>(), K,
                        static_cast<const float*>(packed->data_ptr()), N, 1.0f, out, N);
    return;
  }
  const char transa = 't', transb = 'n';
  const int m_ = N, n_ = n, k_ = K, lda = K, ldb = K, ldc = N;
  const float one = 1.0f;
  sgemm_(&transa, &transb, &m_, &n_, &k_, &one, w.data_ptr<float>(), &lda, x.data_ptr<float>(), &ldb, &one, out,
         &ldc);
}

constexpr float kLayerNormEps = 1e-5f;  // nn.LayerNorm's default, the blocks'

// y = LayerNorm(x) over rows of C (mean, then the mean squared deviation, each summed in lanes).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void layer_norm_rows(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float* y) {
  for (int64_t r = 0; r < rows; ++r, x += C, y += C) {
    const float mean = sum_of(x, C) / static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mean) * (x[c] - mean);
    const float rstd = 1.0f / std::sqrt(sum_of(y, C) / static_cast<float>(C) + kLayerNormEps);
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mean) * rstd * gamma[c] + beta[c];
  }
}

// x = GELU(x) = x/2 (1 + erf(x / sqrt 2)), the exact (erf) form nn.GELU defaults to.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void gelu_in_place(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + erf_approx(x[i] * 0.70710678118654752f));
}

// h += y, elementwise (what `h + y` computes, in place).
void add_into(at::Tensor& h, const at::Tensor& y) {
  float* a = h.data_ptr<float>();
  const float* b = y.data_ptr<float>();
  const int64_t size = h.numel();
  for (int64_t i = 0; i < size; ++i) a[i] += b[i];
}

// This step's keys and values of rows [begin, begin + n) into the cache: qkv [n, L, 3, h, D], token i
// of a row at slot `slot + i`.
void write_kv(const at::Tensor& qkv, const at::Tensor& cache_k, const at::Tensor& cache_v, int64_t layer,
              int64_t begin, int64_t n, int64_t L, int64_t slot) {
  const int64_t H = cache_k.size(2), D = cache_k.size(4);
  const float* src = qkv.data_ptr<float>();
  for (const auto& [cache, part] : {std::pair{&cache_k, 1}, std::pair{&cache_v, 2}}) {
    float* dst = cache->data_ptr<float>();
    const int64_t s0 = cache->stride(0), s1 = cache->stride(1), s2 = cache->stride(2), s3 = cache->stride(3);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t h = 0; h < H; ++h)
          std::memcpy(dst + layer * s0 + (begin + r) * s1 + h * s2 + (slot + i) * s3,
                      src + (((r * L + i) * 3 + part) * H + h) * D, D * sizeof(float));
  }
}

}  // namespace

at::Tensor decode_layers_cpu(const at::Tensor& x, at::TensorList weights, const at::Tensor& cache_k,
                             const at::Tensor& cache_v, int64_t n_head, int64_t slot, int64_t shared, int64_t groups,
                             int64_t group_rows, const std::optional<at::Tensor>& prefix_rows, int64_t transition_dim,
                             const std::optional<at::Tensor>& key_start, const std::optional<at::Tensor>& goal_k,
                             const std::optional<at::Tensor>& goal_v, int64_t goal_group_rows,
                             const std::optional<at::Tensor>& goal_rows, std::optional<at::TensorList> packed_weights) {
  check_decode_layers(x, weights, cache_k, cache_v, n_head, slot, shared, groups, group_rows, prefix_rows, goal_k,
                      goal_v);
  // x [R, C]: one token per row; [R, L, C]: L tokens per row at slots slot.., of which only the
  // last one's output is returned (all their K/V are cached), as a prefill's last block computes it
  const int64_t R = x.size(0), L = x.dim() == 3 ? x.size(1) : 1, C = x.size(-1), D = C / n_head;
  const int64_t n_layer = cache_k.size(0);
  // what a chunk of rows would otherwise read past or divide by before decode_attention checks it
  TORCH_CHECK(!goal_k.has_value() || goal_rows.has_value() || goal_group_rows >= 1,
              "tt::decode_layers: goal_group_rows must be >= 1, got ", goal_group_rows);
  TORCH_CHECK(!key_start.has_value() || (key_start->dim() == 1 && key_start->size(0) == R),
              "tt::decode_layers: key_start must be [", R, "], got ", key_start->sizes());
  const at::TensorList packed = packed_weights.value_or(at::TensorList());
  const int64_t n_packed = n_layer * std::size(kLinearWeights);
  const char* not_packed = "tt::decode_layers: packed must be decode_pack's output for these weights";
  TORCH_CHECK(packed.empty() || static_cast<int64_t>(packed.size()) == n_packed + 1, not_packed, " (",
              n_packed + 1, " tensors), got ", packed.size());
  // the rows the weights were packed for: chunks of other sizes (another thread count) run unpacked
  int64_t packed_rows = 0;
  if (!packed.empty()) {
    const at::Tensor& record = packed.back();  // rows, then each GEMM weight's address and version
    TORCH_CHECK(record.device().is_cpu() && record.scalar_type() == at::kLong && record.dim() == 1 &&
                    record.is_contiguous() && record.numel() == 1 + 2 * n_packed,
                not_packed);
    const int64_t* r = record.data_ptr<int64_t>();
    packed_rows = r[0];
    for (int64_t l = 0; l < n_layer; ++l)
      for (size_t i = 0; i < std::size(kLinearWeights); ++i) {
        const int64_t j = l * std::size(kLinearWeights) + i;
        const at::Tensor& weight = weights[l * kWeightsPerLayer + kLinearWeights[i]];
        TORCH_CHECK(r[1 + 2 * j] == reinterpret_cast<int64_t>(weight.data_ptr()) &&
                        r[2 + 2 * j] == static_cast<int64_t>(weight._version()),
                    not_packed, ": weight ", kLinearWeights[i], " of block ", l,
                    " is another tensor than the one packed, or has changed since (pack the weights again)");
        const at::Tensor& t = packed[j];
        TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kByte && t.dim() == 1 && t.is_contiguous(),
                    not_packed);
      }
  }
  // Rows are independent in a decode step: with several threads, each runs every layer for a chunk
  // of rows (one parallel region per step instead of one per op; the ATen ops inside run on their
  // chunk single-threaded, and compute every row as they would in one call).
  const int64_t chunks = chunks_of(R, L);
  std::optional<at::Tensor> table = prefix_rows, goal_table = goal_rows;
  if (chunks > 1 && shared > 0 && !table.has_value()) table = group_table(R, group_rows, groups);
  if (chunks > 1 && goal_k.has_value() && !goal_table.has_value())
    goal_table = group_table(R, goal_group_rows, goal_k->size(1));
  at::Tensor out = chunks > 1 ? at::empty({R, C}, x.options()) : at::Tensor();

  std::vector<at::Tensor> w;  // contiguous (parameters are: no copies), as linear() reads them
  w.reserve(weights.size());
  for (const at::Tensor& t : weights) w.push_back(t.contiguous());
  int64_t hidden = 0;  // the widest MLP (checks allow blocks of different widths)
  for (int64_t l = 0; l < n_layer; ++l) hidden = std::max(hidden, w[l * kWeightsPerLayer + kFcWeight].size(0));

  auto run = [&](int64_t begin, int64_t n) {
    const std::optional<at::Tensor> rows_table = rows_of(table, begin, n), rows_goal = rows_of(goal_table, begin, n);
    const std::optional<at::Tensor> rows_key_start = rows_of(key_start, begin, n);
    const int64_t M = n * L;  // tokens of the chunk, row-major
    at::Tensor h = x.narrow(0, begin, n).reshape({M, C}).clone();  // the residual stream
    at::Tensor qkv = at::empty({M, 3 * C}, x.options()), att = at::empty({M, C}, x.options());
    at::Tensor y = at::empty({M, C}, x.options()), m = at::empty({M * hidden}, x.options());
    at::Tensor normed = at::empty({M, C}, x.options());
    const auto layer_norm = [&](const at::Tensor& gamma, const at::Tensor& beta) {
      at::Tensor out = normed.narrow(0, 0, h.size(0));
      layer_norm_rows(h.data_ptr<float>(), h.size(0), C, gamma.data_ptr<float>(), beta.data_ptr<float>(),
                      out.data_ptr<float>());
      return out;
    };
    at::Tensor query_out = L > 1 ? at::empty({n, n_head, D}, x.options()) : att.view({n, n_head, D});
    const at::Tensor queries = qkv.view({n, L, 3, n_head, D});
    const bool use_packed = n == packed_rows && L == 1 && cblas_sgemm_compute != nullptr;
    for (int64_t l = 0; l < n_layer; ++l) {
      const at::Tensor* lw = w.data() + l * kWeightsPerLayer;
      const at::Tensor* pw = use_packed ? packed.data() + l * std::size(kLinearWeights) : nullptr;
      const auto packed_weight = [&](int64_t i) { return pw ? pw + i : nullptr; };
      // attention: ln1, qkv, K/V into the cache at slot.., decode attention, proj, residual
      linear(layer_norm(lw[kLn1Weight], lw[kLn1Bias]), lw[kQkvWeight], lw[kQkvBias], qkv, packed_weight(0));
      write_kv(qkv, cache_k, cache_v, l, begin, n, L, slot);
      const at::Tensor k_layer = cache_k.select(0, l).narrow(0, begin, n);
      const at::Tensor v_layer = cache_v.select(0, l).narrow(0, begin, n);
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
      // every token's query, each seeing its row's keys up to its own slot; in the last layer the
      // last token's alone (the others' outputs are not needed, their K/V are cached)
      const bool last = l == n_layer - 1;
      for (int64_t i = last ? L - 1 : 0; i < L; ++i) {
        const int64_t own = slot + i + 1 - shared;
        decode_attention_cpu(queries.select(1, i).select(1, 0), k_layer.narrow(2, shared, own),
                             v_layer.narrow(2, shared, own), prefix_k, prefix_v, group_rows, rows_table, slot + i,
                             transition_dim, rows_key_start, query_out, layer_goal_k, layer_goal_v, goal_group_rows,
                             rows_goal);
        if (L > 1) (last ? att.narrow(0, 0, n) : att.view({n, L, C}).select(1, i)).copy_(query_out.view({n, C}));
      }
      if (last && L > 1) h = h.view({n, L, C}).select(1, L - 1).contiguous();  // from here on the last tokens
      const int64_t rows = last ? n : M;
      at::Tensor att_rows = att.narrow(0, 0, rows), y_rows = y.narrow(0, 0, rows);
      at::Tensor m_rows = m.narrow(0, 0, rows * lw[kFcWeight].size(0)).view({rows, lw[kFcWeight].size(0)});
      linear(att_rows, lw[kAttnProjWeight], lw[kAttnProjBias], y_rows, packed_weight(1));
      add_into(h, y_rows);
      // MLP: ln2, fc, GELU, proj, residual
      linear(layer_norm(lw[kLn2Weight], lw[kLn2Bias]), lw[kFcWeight], lw[kFcBias], m_rows, packed_weight(2));
      gelu_in_place(m_rows.data_ptr<float>(), m_rows.numel());
      linear(m_rows, lw[kMlpProjWeight], lw[kMlpProjBias], y_rows, packed_weight(3));
      add_into(h, y_rows);
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

std::vector<at::Tensor> decode_pack_cpu(at::TensorList weights, int64_t rows) {
  TORCH_CHECK(!weights.empty() && weights.size() % kWeightsPerLayer == 0, "tt::decode_pack: expected ",
              kWeightsPerLayer, " weights per block, got ", weights.size());
  TORCH_CHECK(rows >= 1, "tt::decode_pack: rows must be >= 1, got ", rows);
  const int64_t chunk_rows = rows / chunks_of(rows);  // a chunk of another size (R not a multiple) runs unpacked
  if (cblas_sgemm_pack == nullptr || cblas_sgemm_pack_get_size == nullptr || sgemm_ == nullptr ||
      chunk_rows < kMinPackedRows)
    return {};
  // the buffers, then what decode_layers checks them against: the rows, each weight's address and version
  const int64_t n_packed = weights.size() / kWeightsPerLayer * std::size(kLinearWeights);
  at::Tensor record = at::empty({1 + 2 * n_packed}, at::kLong);
  int64_t* r = record.data_ptr<int64_t>();
  r[0] = chunk_rows;
  std::vector<at::Tensor> packed;
  for (size_t l = 0; l < weights.size(); l += kWeightsPerLayer) {
    for (int64_t i : kLinearWeights) {
      const at::Tensor w = weights[l + i].contiguous();
      TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.dim() == 2 && w.size(0) <= INT32_MAX &&
                      w.size(1) <= INT32_MAX,
                  "tt::decode_pack: weights must be float32 CPU matrices, got ", w.scalar_type(), " ", w.sizes(),
                  " on ", w.device());
      const int N = w.size(0), K = w.size(1);
      at::Tensor buffer = at::empty({static_cast<int64_t>(cblas_sgemm_pack_get_size(kBMatrix, chunk_rows, N, K))},
                                    w.options().dtype(at::kByte));
      cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, chunk_rows, N, K, 1.0f, w.data_ptr<float>(), K,
                       static_cast<float*>(buffer.data_ptr()));
      const int64_t j = packed.size();
      r[1 + 2 * j] = reinterpret_cast<int64_t>(weights[l + i].data_ptr());
      r[2 + 2 * j] = static_cast<int64_t>(weights[l + i]._version());
      packed.push_back(buffer);
    }
  }
  packed.push_back(record);
  return packed;
}

}  // namespace tt
