// The philox_uniform kernel body (launched by csrc/cuda/philox.cu): the device path of
// csrc/philox.h, one uniform per thread.
#pragma once

#include "../../philox.h"
#include "common.cuh"

namespace tt {

constexpr int kPhiloxThreads = 256;

// One thread per output, kPhiloxThreads per block, no shared memory.
inline LaunchConfig philox_launch(int64_t n) {
  return {static_cast<unsigned>((n + kPhiloxThreads - 1) / kPhiloxThreads), kPhiloxThreads, 0, 0};
}

namespace {

__global__ void philox_uniform_kernel(uint64_t seed, uint64_t offset, int64_t n, double* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = philox_uniform(seed, offset, static_cast<uint64_t>(i));
}

// The raw generator, one Philox4x32-10 block per thread: in [n, 6] (counter words, key words),
// out [n, 4]. No op launches it: the known-answer tests (tests/test_simt.py) run it emulated, as
// the words behind the uniforms are not all visible through philox_uniform_kernel.
__global__ void philox_block_kernel(const uint32_t* __restrict__ in, int64_t n, uint32_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t* c = in + 6 * i;
  const Philox4x32 r = philox4x32_10(c[0], c[1], c[2], c[3], c[4], c[5]);
  for (int j = 0; j < 4; ++j) out[4 * i + j] = r.v[j];
}

}  // namespace

}  // namespace tt
