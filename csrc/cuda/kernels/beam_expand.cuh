// The beam_expand kernel body (launched by csrc/cuda/beam_expand.cu): per plan the k best of its
// N = W * V candidates (candidate c = w * V + v scores scores[b, w] + logp[b * W + w, v]), in the
// order of csrc/beam_expand.h. One block per plan; its shared memory grows with k, not with N:
//  1. radix select of the k-th best key: 4 passes over the candidates, each an 8-bit histogram
//     (shared atomics) of the keys that share the digits chosen so far, then the digit where the
//     count from the top reaches k;
//  2. one pass in index order, chunks of blockDim candidates, gathering every candidate above that
//     key and the lowest-indexed ones equal to it (a block-wide prefix count of both);
//  3. a bitonic sort of those k ranks (key, then index: csrc/beam_expand.h) in shared memory.
// Candidates are recomputed in every pass (one float32 addition, as the CPU op and the reference do)
// rather than stored, and the values written are the sums themselves (NaN, -0 as they come).
#pragma once

#include "../../beam_expand.h"
#include "common.cuh"

namespace tt {

constexpr int kBeamExpandMaxThreads = 1024;
constexpr int kBeamExpandMaxK = 4096;  // survivors per plan: 32 KiB of ranks in shared memory

// One block per plan, a power of two of threads (32 to 1024) with about 4 candidates or more per
// thread; shared memory: P = next_power_of_two(k) ranks (uint64), a 256-bin histogram, 32 scan
// partials and 2 ints of selection state.
inline LaunchConfig beam_expand_launch(int B, int N, int k) {
  const int P = next_power_of_two(k);
  int threads = 32;
  while (threads < kBeamExpandMaxThreads && threads * 4 < N) threads <<= 1;
  return {static_cast<unsigned>(B), static_cast<unsigned>(threads), P * sizeof(uint64_t) + (256 + 32 + 2) * sizeof(int),
          P};
}

namespace {

__global__ void beam_expand_kernel(const float* __restrict__ scores, const float* __restrict__ logp, int W, int V,
                                   int k, int P, float* __restrict__ values, int64_t* __restrict__ parents,
                                   int64_t* __restrict__ tokens) {
  unsigned char* smem = dynamic_shared_memory();
  uint64_t* rank = reinterpret_cast<uint64_t*>(smem);
  int* hist = reinterpret_cast<int*>(rank + P);
  int* scratch = hist + 256;
  int* state = scratch + 32;  // the digit chosen by a pass, and how many of the k it still holds
  const int b = blockIdx.x, N = W * V;
  const float* score = scores + static_cast<int64_t>(b) * W;
  const float* row = logp + static_cast<int64_t>(b) * N;  // the plan's [W, V] log-probs: candidate c at row[c]
  const auto key_of = [&](int c) { return beam_expand_key(score[c / V] + row[c]); };

  // 1. The k-th best key, 8 bits a pass from the top. `remaining`: how many of the k best have the
  // key's digits chosen so far (the others have larger keys).
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    int run_digit = -1, run = 0;  // a thread's runs of one digit are counted in one atomic (log-probs
    for (int c = threadIdx.x; c < N; c += blockDim.x) {  // share their top bits: most keys one digit)
      const uint32_t key = key_of(c);
      if ((key & mask) != prefix) continue;
      const int digit = static_cast<int>((key >> shift) & 255u);
      if (digit != run_digit) {
        if (run) atomicAdd(&hist[run_digit], run);
        run_digit = digit;
        run = 0;
      }
      ++run;
    }
    if (run) atomicAdd(&hist[run_digit], run);
    __syncthreads();
    if (threadIdx.x < 32) {  // the first warp: lane l sums digits 255 - 8l down to 248 - 8l, scans
      const int lane = threadIdx.x;
      int sum = 0;
      for (int i = 0; i < 8; ++i) sum += hist[255 - 8 * lane - i];
      int through = sum;  // candidates with this lane's digits or larger ones
      for (int d = 1; d < 32; d <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, through, d);
        if (lane >= d) through += up;
      }
      int above = through - sum;
      if (above < remaining && remaining <= through) {  // exactly one lane: the k-th is among its digits
        int digit = 255 - 8 * lane;
        while (above + hist[digit] < remaining) above += hist[digit--];
        state[0] = digit;
        state[1] = remaining - above;
      }
    }
    __syncthreads();  // state is read before the next pass's first barrier, written after its second
    prefix |= static_cast<uint32_t>(state[0]) << shift;
    mask |= 255u << shift;
    remaining = state[1];
  }

  // 2. Gather, in index order: the k - need candidates above the k-th key, and the first `need` equal
  // to it. One scan counts both per chunk: above in the high 16 bits, equal in the low ones.
  const uint32_t kth = prefix;
  const int need = remaining, n_above = k - need;
  int placed_above = 0, seen_equal = 0;  // the same in every thread (block totals)
  for (int start = 0; start < N && (placed_above < n_above || seen_equal < need); start += blockDim.x) {
    const int c = start + static_cast<int>(threadIdx.x);
    const uint32_t key = c < N ? key_of(c) : 0u;
    const int flags = c >= N ? 0 : key > kth ? 1 << 16 : key == kth ? 1 : 0;
    int total;
    const int before = block_inclusive_scan(flags, scratch, &total) - flags;
    if (flags >> 16) {
      rank[placed_above + (before >> 16)] = beam_expand_rank(key, c);
    } else if (flags && seen_equal + (before & 0xffff) < need) {
      rank[n_above + seen_equal + (before & 0xffff)] = beam_expand_rank(key, c);
    }
    placed_above += total >> 16;
    seen_equal += total & 0xffff;
  }

  // 3. Sort the k ranks (padded with 0, below every candidate's) and write them out.
  for (int i = k + threadIdx.x; i < P; i += blockDim.x) rank[i] = 0;
  __syncthreads();
  bitonic_sort(rank, static_cast<int*>(nullptr), P, [](uint64_t x, int, uint64_t y, int) { return x > y; });
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const int c = static_cast<int>(~static_cast<uint32_t>(rank[j]));
    const int w = c / V;
    const int64_t out = static_cast<int64_t>(b) * k + j;
    values[out] = score[w] + row[c];
    parents[out] = w;
    tokens[out] = c - w * V;
  }
}

}  // namespace

}  // namespace tt
