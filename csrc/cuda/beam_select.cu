// tt::beam_select on CUDA: argument checks and the launch; the kernel is in kernels/beam_select.cuh.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "kernels/beam_select.cuh"

namespace tt {

void beam_select_cuda(const at::Tensor& scores, int64_t k, int64_t group, const at::Tensor& terms,
                      const at::Tensor& tokens, at::Tensor& values, at::Tensor& indices, at::Tensor& rows,
                      at::Tensor& terms_out, at::Tensor& tokens_out) {
  check_beam_select(scores, k, group, terms, tokens, values, indices, rows, terms_out, tokens_out);
  TORCH_CHECK(scores.size(0) <= kMaxBlocks, "tt::beam_select: at most ", kMaxBlocks,
              " plans on CUDA (one block each), got ", scores.size(0));
  const int B = static_cast<int>(scores.size(0)), M = static_cast<int>(scores.size(1));
  TORCH_CHECK(M <= kBeamSelectMaxCandidates, "tt::beam_select: at most ", kBeamSelectMaxCandidates,
              " candidates per plan on CUDA");
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(scores.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "tt::beam_select_cuda", [&] {
    using score_t = scalar_t;
    const LaunchConfig cfg = beam_select_launch<score_t>(B, M);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, terms.scalar_type(), "tt::beam_select_cuda_terms", [&] {
      auto kernel = beam_select_kernel<score_t, scalar_t>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(cfg.shared)));
      kernel<<<cfg.blocks, cfg.threads, cfg.shared, stream>>>(
          scores.data_ptr<score_t>(), B, M, cfg.P, static_cast<int>(k), static_cast<int>(group),
          terms.data_ptr<scalar_t>(), terms.size(1), tokens.data_ptr<int64_t>(), tokens.size(1), values.data_ptr<score_t>(), indices.data_ptr<int64_t>(),
          rows.data_ptr<int64_t>(), terms_out.data_ptr<scalar_t>(), tokens_out.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace tt
