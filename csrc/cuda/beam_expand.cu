// tt::beam_expand on CUDA: argument checks and the launch; the kernel is in kernels/beam_expand.cuh.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "kernels/beam_expand.cuh"

namespace tt {

void beam_expand_cuda(const at::Tensor& scores, const at::Tensor& logp, int64_t k, at::Tensor& values,
                      at::Tensor& parents, at::Tensor& tokens) {
  check_beam_expand(scores, logp, k, values, parents, tokens);
  TORCH_CHECK(k <= kBeamExpandMaxK, "tt::beam_expand: at most ", kBeamExpandMaxK, " survivors per plan on CUDA, got k=",
              k);
  TORCH_CHECK(scores.size(0) <= kMaxBlocks, "tt::beam_expand: at most ", kMaxBlocks,
              " plans on CUDA (one block each), got ", scores.size(0));
  const int B = static_cast<int>(scores.size(0)), W = static_cast<int>(scores.size(1));
  const int V = static_cast<int>(logp.size(1));
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(scores.device());
  const LaunchConfig cfg = beam_expand_launch(B, W * V, static_cast<int>(k));
  beam_expand_kernel<<<cfg.blocks, cfg.threads, cfg.shared, c10::cuda::getCurrentCUDAStream()>>>(
      scores.data_ptr<float>(), logp.data_ptr<float>(), W, V, static_cast<int>(k), cfg.P, values.data_ptr<float>(),
      parents.data_ptr<int64_t>(), tokens.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace tt
