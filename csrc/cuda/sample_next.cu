// tt::sample_next on CUDA: argument checks and the launch; the kernel is in kernels/sample_next.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "kernels/sample_next.cuh"

namespace tt {

void sample_next_cuda(const at::Tensor& logits, double temperature, int64_t top_k, double cdf,
                      const std::optional<at::Tensor>& midpoints, const at::Tensor& rng_state, at::Tensor& tokens,
                      at::Tensor& expectation) {
  check_sample_next(logits, temperature, top_k, cdf, midpoints, rng_state, tokens, expectation);
  TORCH_CHECK(logits.size(0) <= kMaxBlocks, "tt::sample_next: at most ", kMaxBlocks,
              " rows on CUDA (one block each), got ", logits.size(0));
  const int rows = static_cast<int>(logits.size(0)), V = static_cast<int>(logits.size(1));
  TORCH_CHECK(V <= kSampleNextMaxVocab, "tt::sample_next: at most ", kSampleNextMaxVocab,
              " tokens per row on CUDA, got ", V);
  if (rows == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool has_mids = midpoints.has_value();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "tt::sample_next_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const LaunchConfig cfg = sample_next_launch<acc_t>(rows, V);
    auto launch = [&](auto* mids, auto* out) {
      sample_next_kernel<scalar_t, acc_t><<<cfg.blocks, cfg.threads, cfg.shared, stream>>>(
          logits.data_ptr<scalar_t>(), V, cfg.P, temperature, static_cast<int>(top_k), cdf, mids,
          rng_state.data_ptr<int64_t>(), tokens.data_ptr<int64_t>(), out);
    };
    if (!has_mids) {
      launch(static_cast<const float*>(nullptr), static_cast<float*>(nullptr));
    } else if (midpoints->scalar_type() == at::kDouble) {
      if (expectation.scalar_type() == at::kDouble) launch(midpoints->data_ptr<double>(), expectation.data_ptr<double>());
      else launch(midpoints->data_ptr<double>(), expectation.data_ptr<float>());
    } else {
      if (expectation.scalar_type() == at::kDouble) launch(midpoints->data_ptr<float>(), expectation.data_ptr<double>());
      else launch(midpoints->data_ptr<float>(), expectation.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace tt
