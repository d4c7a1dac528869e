// tt::beam_select on CUDA: one block per plan; (score, index) pairs bitonic-sorted in shared
// memory (descending, ties to the lower index, NaN last), then the survivors' rows gathered.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "common.cuh"

namespace tt {

namespace {

constexpr int kThreads = 1024;
constexpr int kMaxCandidates = 4096;

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
                                   const term_t* __restrict__ terms, int S, const int64_t* __restrict__ tokens,
                                   int L, score_t* __restrict__ values, int64_t* __restrict__ indices,
                                   int64_t* __restrict__ rows, term_t* __restrict__ terms_out,
                                   int64_t* __restrict__ tokens_out) {
  extern __shared__ unsigned char smem[];
  score_t* key = reinterpret_cast<score_t*>(smem);
  int* index = reinterpret_cast<int*>(key + P);
  const int b = blockIdx.x;
  const score_t* row = scores + static_cast<int64_t>(b) * M;
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
    rows[out] = static_cast<int64_t>(m / group) * B * group + static_cast<int64_t>(b) * group + m % group;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < k * S; e += blockDim.x) {
    const int j = e / S, c = e % S, m = index[j];
    const int64_t src = static_cast<int64_t>(m / group) * B * group + static_cast<int64_t>(b) * group + m % group;
    terms_out[(static_cast<int64_t>(b) * k + j) * S + c] = terms[src * S + c];
  }
  for (int e = threadIdx.x; e < k * L; e += blockDim.x) {
    const int j = e / L, c = e % L, m = index[j];
    const int64_t src = static_cast<int64_t>(m / group) * B * group + static_cast<int64_t>(b) * group + m % group;
    tokens_out[(static_cast<int64_t>(b) * k + j) * L + c] = tokens[src * L + c];
  }
}

}  // namespace

void beam_select_cuda(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                      const at::Tensor& tokens, at::Tensor& values, at::Tensor& indices, at::Tensor& rows,
                      at::Tensor& terms_out, at::Tensor& tokens_out) {
  check_beam_select(scores, k, group, terms, tokens, values, indices, rows, terms_out, tokens_out);
  const int B = static_cast<int>(scores.size(0)), M = static_cast<int>(scores.size(1));
  TORCH_CHECK(M <= kMaxCandidates, "tt::beam_select: at most ", kMaxCandidates, " candidates per plan on CUDA");
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(scores.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int P = next_power_of_two(M);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "tt::beam_select_cuda", [&] {
    using score_t = scalar_t;
    const size_t shared = P * (sizeof(score_t) + sizeof(int));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, terms.scalar_type(), "tt::beam_select_cuda_terms", [&] {
      auto kernel = beam_select_kernel<score_t, scalar_t>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
      kernel<<<B, kThreads, shared, stream>>>(
          scores.data_ptr<score_t>(), B, M, P, static_cast<int>(k), static_cast<int>(group),
          terms.data_ptr<scalar_t>(), static_cast<int>(terms.size(1)), tokens.data_ptr<int64_t>(),
          static_cast<int>(tokens.size(1)), values.data_ptr<score_t>(), indices.data_ptr<int64_t>(),
          rows.data_ptr<int64_t>(), terms_out.data_ptr<scalar_t>(), tokens_out.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace tt
