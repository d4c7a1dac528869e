// The sample_next kernel body (launched by csrc/cuda/sample_next.cu): one block per row; logits,
// filters and the draw in shared memory. Same algorithm and Philox stream as the CPU
// implementation (csrc/cpu/sample_next.cpp), and the same policy for non-finite logits and the
// cdf boundary (csrc/sampling.h).
#pragma once

#include "../../sampling.h"
#include "common.cuh"

namespace tt {

constexpr int kSampleNextThreads = 256;
constexpr int kSampleNextMaxVocab = 1024;

// One block per row; shared memory: z and buf (acc_t) and the draw's weights w (double), P each.
template <typename acc_t>
inline LaunchConfig sample_next_launch(int rows, int V) {
  const int P = next_power_of_two(V);
  return {static_cast<unsigned>(rows), kSampleNextThreads, 2 * P * sizeof(acc_t) + P * sizeof(double), P};
}

namespace {

struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// acc_t: the accumulation type of scalar_t (at::opmath_type: float for half, bfloat16 and float).
template <typename scalar_t, typename acc_t, typename mid_t, typename out_t>
__global__ void sample_next_kernel(const scalar_t* __restrict__ logits, int V, int P, double temperature, int top_k,
                                   double cdf, const mid_t* __restrict__ mids, const int64_t* __restrict__ state,
                                   int64_t* __restrict__ tokens, out_t* __restrict__ expectation) {
  unsigned char* smem = dynamic_shared_memory();
  acc_t* z = reinterpret_cast<acc_t*>(smem);
  acc_t* buf = z + P;
  double* w = reinterpret_cast<double*>(buf + P);
  __shared__ acc_t scratch_acc[32];
  __shared__ acc_t cutoff_s;
  const int r = blockIdx.x;
  const scalar_t* row = logits + static_cast<int64_t>(r) * V;
  const acc_t inf = kstd::numeric_limits<acc_t>::infinity();

  acc_t local_max = -inf;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    z[i] = finite_or_minus_inf(static_cast<acc_t>(row[i]) / static_cast<acc_t>(temperature));
    local_max = z[i] > local_max ? z[i] : local_max;
  }
  const acc_t zmax = block_reduce(local_max, Max(), -inf, scratch_acc);
  acc_t local_sum = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) local_sum += exp(shift_by_max(z[i], zmax));
  const acc_t total = block_reduce(local_sum, Sum(), acc_t(0), scratch_acc);
  auto prob = [&](int i) { return exp(shift_by_max(z[i], zmax)) / total; };

  if (mids != nullptr) {  // expectation under the raw probabilities, stop token dropped
    acc_t local_e = 0;
    for (int i = threadIdx.x; i < V - 1; i += blockDim.x) local_e += prob(i) * static_cast<acc_t>(mids[i]);
    const acc_t e = block_reduce(local_e, Sum(), acc_t(0), scratch_acc);
    if (threadIdx.x == 0) expectation[r] = static_cast<out_t>(e);
  }
  if (cdf_filters(cdf)) {  // drop every token at most as likely as the last sorted one with cumsum < cdf
    for (int i = threadIdx.x; i < P; i += blockDim.x) buf[i] = i < V ? prob(i) : inf;
    __syncthreads();
    bitonic_sort(buf, static_cast<int*>(nullptr), P, [](acc_t a, int, acc_t b, int) { return a < b; });
    if (threadIdx.x == 0) cutoff_s = cdf_cutoff(buf, V, static_cast<acc_t>(cdf));
    __syncthreads();
    const acc_t cutoff = cutoff_s;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
      if (prob(i) <= cutoff) z[i] = static_cast<acc_t>(-1000);
    __syncthreads();
  }
  if (top_k > 0) {  // keep the k largest and everything tied with the k-th
    for (int i = threadIdx.x; i < P; i += blockDim.x) buf[i] = i < V ? z[i] : -inf;
    __syncthreads();
    bitonic_sort(buf, static_cast<int*>(nullptr), P, [](acc_t a, int, acc_t b, int) { return a < b; });
    const acc_t kth = buf[P - top_k];
    for (int i = threadIdx.x; i < V; i += blockDim.x)
      if (z[i] < kth) z[i] = -inf;
    __syncthreads();
  }
  acc_t kept = -inf;
  for (int i = threadIdx.x; i < V; i += blockDim.x) kept = z[i] > kept ? z[i] : kept;
  const double kept_max = static_cast<double>(block_reduce(kept, Max(), -inf, scratch_acc));
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const double d = shift_by_max(static_cast<double>(z[i]), kept_max);
    w[i] = d < -746.0 ? 0.0 : ::exp(d);
  }
  __syncthreads();
  if (threadIdx.x == 0)  // inverse CDF at the row's Philox uniform, summed in order as on the CPU
    tokens[r] = draw_token(w, V, static_cast<uint64_t>(state[0]), static_cast<uint64_t>(state[1]),
                           static_cast<uint64_t>(r));
}

}  // namespace

}  // namespace tt
