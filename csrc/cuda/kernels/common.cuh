// Block-level helpers for the tt CUDA kernels: reductions and an in-shared-memory bitonic sort.
// The headers in csrc/cuda/kernels/ hold the kernel bodies and no ATen: the .cu launchers compile
// them with nvcc, and tests/simt/ runs them on the CPU under a SIMT emulator (included first).
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <cuda/std/limits>
#elif defined(TT_SIMT)
#include <limits>
#else
#error "csrc/cuda/kernels/: compile with nvcc, or include the SIMT emulator (tests/simt/simt.h) first"
#endif

#include <cstddef>
#include <cstdint>

namespace tt {

#if defined(__CUDACC__)
namespace kstd = ::cuda::std;  // numeric_limits usable in device code

// The block's dynamic shared memory: the launch's byte count, laid out by each kernel.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ unsigned char smem[];
  return smem;
}
#else
namespace kstd = ::std;
using ::dynamic_shared_memory;  // the emulator's: exactly the launch's bytes, per block
#endif

// Reduce one value per thread across the block with `op` (whose identity is `identity`);
// every thread gets the result. `scratch` holds 32 values in shared memory.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  for (int d = 16; d > 0; d >>= 1) value = op(value, __shfl_xor_sync(0xffffffffu, value, d));
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    T v = lane < warps ? scratch[lane] : identity;
    for (int d = 16; d > 0; d >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, d));
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  const T result = scratch[0];
  __syncthreads();  // before a next reduction overwrites scratch (tests/test_simt.py drops it on purpose)
  return result;
}

// Inclusive prefix sum of one int per thread in thread order; *total gets the block's sum. blockDim.x
// must be a multiple of 32 (whole warps); `scratch` holds 32 ints in shared memory.
__device__ inline int block_inclusive_scan(int value, int* scratch, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int d = 1; d < 32; d <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, value, d);
    if (lane >= d) value += up;
  }
  if (lane == 31) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {  // the warps' totals, scanned by the first warp
    int sum = lane < warps ? scratch[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, sum, d);
      if (lane >= d) sum += up;
    }
    if (lane < warps) scratch[lane] = sum;
  }
  __syncthreads();
  if (warp > 0) value += scratch[warp - 1];
  *total = scratch[warps - 1];
  __syncthreads();  // before a next scan overwrites scratch
  return value;
}

// Sort n (a power of two) elements of `keys` in shared memory so that before(a, b) holds for
// every earlier a; `values` (optional) moves with its key.
template <typename K, typename V, typename Before>
__device__ void bitonic_sort(K* keys, V* values, int n, Before before) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool ascending = (i & size) == 0;
          const bool swap = ascending ? before(keys[j], values ? values[j] : V(), keys[i], values ? values[i] : V())
                                      : before(keys[i], values ? values[i] : V(), keys[j], values ? values[j] : V());
          if (swap) {
            const K k = keys[i];
            keys[i] = keys[j];
            keys[j] = k;
            if (values) {
              const V v = values[i];
              values[i] = values[j];
              values[j] = v;
            }
          }
        }
      }
      __syncthreads();
    }
  }
}

inline int next_power_of_two(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// The most blocks of a 1-D grid (CUDA's gridDim.x limit), and so of the plans or rows of the kernels
// that give each its own block (a block index is an int): their launchers refuse more.
constexpr int64_t kMaxBlocks = 2147483647;

// How a kernel is launched: blocks, threads per block, dynamic shared memory (bytes), and P, the
// power of two the kernel pads its shared arrays to. Computed once per kernel in its header, for
// the .cu launcher and the emulator alike.
struct LaunchConfig {
  unsigned blocks;
  unsigned threads;
  size_t shared;
  int P;
};

}  // namespace tt
