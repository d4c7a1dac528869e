// tt::philox_uniform on CUDA: the device path of csrc/philox.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "../philox.h"

namespace tt {

namespace {

__global__ void philox_uniform_kernel(uint64_t seed, uint64_t offset, int64_t n, double* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = philox_uniform(seed, offset, static_cast<uint64_t>(i));
}

}  // namespace

void philox_uniform_cuda(int64_t seed, int64_t offset, at::Tensor& out) {
  check_philox_uniform(out);
  const int64_t n = out.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  philox_uniform_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace tt
