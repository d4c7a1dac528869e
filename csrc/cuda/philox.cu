// tt::philox_uniform on CUDA: argument checks and the launch; the kernel is in kernels/philox.cuh.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "kernels/philox.cuh"

namespace tt {

void philox_uniform_cuda(int64_t seed, int64_t offset, at::Tensor& out) {
  check_philox_uniform(out);
  const int64_t n = out.numel();
  TORCH_CHECK(n <= kMaxBlocks * kPhiloxThreads, "tt::philox_uniform: at most ", kMaxBlocks * kPhiloxThreads,
              " uniforms on CUDA, got ", n);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const LaunchConfig cfg = philox_launch(n);
  philox_uniform_kernel<<<cfg.blocks, cfg.threads, cfg.shared, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace tt
