// The beam_select kernel body (launched by csrc/cuda/beam_select.cu): one block per plan;
// (score, index) pairs bitonic-sorted in shared memory (descending, ties to the lower index, NaN
// last), then the survivors' rows gathered.
#pragma once

#include "common.cuh"

namespace tt {

constexpr int kBeamSelectThreads = 1024;
constexpr int kBeamSelectMaxCandidates = 4096;

// One block per plan; shared memory: P scores and P candidate indices.
template <typename score_t>
inline LaunchConfig beam_select_launch(int B, int M) {
  const int P = next_power_of_two(M);
  return {static_cast<unsigned>(B), kBeamSelectThreads, P * (sizeof(score_t) + sizeof(int)), P};
}

namespace {

template <typename score_t>
struct Before {  // a sorts before b: larger score, NaN last, then lower index
  __device__ bool operator()(score_t a, int ia, score_t b, int ib) const {
    const bool na = a != a, nb = b != b;
    if (na != nb) return nb;
    if (!na && a != b) return a > b;
    return ia < ib;
  }
};

template <typename score_t, typename term_t>
__global__ void beam_select_kernel(const score_t* __restrict__ scores, int B, int M, int P, int k, int group,
                                   const term_t* __restrict__ terms, int64_t S, const int64_t* __restrict__ tokens,
                                   int64_t L, score_t* __restrict__ values, int64_t* __restrict__ indices,
                                   int64_t* __restrict__ rows, term_t* __restrict__ terms_out,
                                   int64_t* __restrict__ tokens_out) {
  unsigned char* smem = dynamic_shared_memory();
  score_t* key = reinterpret_cast<score_t*>(smem);
  int* index = reinterpret_cast<int*>(key + P);
  const int b = blockIdx.x;
  const score_t* row = scores + static_cast<int64_t>(b) * M;
  const auto source_row = [&](int m) {  // candidate m's row of terms and tokens, in 64 bits (B * M may pass 2^31)
    return static_cast<int64_t>(m / group) * B * group + static_cast<int64_t>(b) * group + m % group;
  };
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    key[i] = i < M ? row[i] : score_t(0);
    index[i] = i < M ? i : M + i;  // padding: its own tie-breaker, sorted after every real candidate
  }
  __syncthreads();
  const Before<score_t> before;
  bitonic_sort(key, index, P, [M, before](score_t a, int ia, score_t b, int ib) {
    const bool pa = ia >= M, pb = ib >= M;
    if (pa != pb) return pb;
    return before(a, ia, b, ib);
  });
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const int m = index[j];
    const int64_t out = static_cast<int64_t>(b) * k + j;
    values[out] = key[j];
    indices[out] = m;
    rows[out] = source_row(m);
  }
  __syncthreads();
  // The gathers, one element per thread and step, in 64 bits: k * S (or k * L) may pass 2^31.
  for (int64_t e = threadIdx.x; e < k * S; e += blockDim.x) {
    const int64_t j = e / S, c = e % S;
    terms_out[(static_cast<int64_t>(b) * k + j) * S + c] = terms[source_row(index[j]) * S + c];
  }
  for (int64_t e = threadIdx.x; e < k * L; e += blockDim.x) {
    const int64_t j = e / L, c = e % L;
    tokens_out[(static_cast<int64_t>(b) * k + j) * L + c] = tokens[source_row(index[j]) * L + c];
  }
}

}  // namespace

}  // namespace tt
