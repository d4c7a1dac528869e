// Kernels that check the emulator itself (tests/test_simt.py::test_emulator_*): CUDA's shuffle
// rules, real atomics, and the misuses it must refuse.
#pragma once

namespace simt_selftest {

constexpr int kShuffleWidths = 6;  // 1, 2, 4, 8, 16, 32

// out [4 ops, 6 widths, blockDim.x]: __shfl_sync from lane 3 * lane + 1, __shfl_up_sync by 3,
// __shfl_down_sync by 5, __shfl_xor_sync with 6, of the value 100 * thread.
__global__ void shuffles(int* out) {
  const int n = blockDim.x, t = threadIdx.x, v = 100 * t;
  for (int w = 0, width = 1; w < kShuffleWidths; ++w, width *= 2) {
    out[(0 * kShuffleWidths + w) * n + t] = __shfl_sync(0xffffffffu, v, 3 * (t % 32) + 1, width);
    out[(1 * kShuffleWidths + w) * n + t] = __shfl_up_sync(0xffffffffu, v, 3, width);
    out[(2 * kShuffleWidths + w) * n + t] = __shfl_down_sync(0xffffffffu, v, 5, width);
    out[(3 * kShuffleWidths + w) * n + t] = __shfl_xor_sync(0xffffffffu, v, 6, width);
  }
}

// counters: [0] += 1, [1] max of global thread ids, [2] min of -thread, [3] += 2 by CAS, [4] exchanged;
// sum += 0.5 per thread.
__global__ void atomics(int* counters, float* sum) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&counters[0], 1);
  atomicMax(&counters[1], g);
  atomicMin(&counters[2], -static_cast<int>(threadIdx.x));
  for (int seen = atomicAdd(&counters[3], 0);;) {
    const int before = atomicCAS(&counters[3], seen, seen + 2);
    if (before == seen) break;
    seen = before;
  }
  atomicExch(&counters[4], 7);
  atomicAdd(sum, 0.5f);
}

__global__ void divergent_barriers() {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
}

__global__ void early_exit() {
  if (threadIdx.x == 0) return;
  __syncthreads();
}

__global__ void partial_mask(int* out) { out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 1); }

}  // namespace simt_selftest
