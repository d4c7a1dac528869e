// A SIMT emulator: runs the CUDA kernel bodies of csrc/cuda/kernels/ on the CPU under CUDA's
// execution model, so tests can execute them (and sanitizers can watch them) without a GPU.
//
// - Every CUDA thread of a block is a std::thread; blocks run one after another (a legal CUDA
//   schedule), on the same threads. threadIdx/blockIdx/blockDim/gridDim are thread-locals (1-D).
//   A launch may run only the blocks from `first_block` on (of a grid of gridDim.x): a test of a
//   grid too large to emulate, or to hold in memory, runs its last blocks alone.
// - `__shared__` variables are function statics (one block runs at a time, so one copy is per
//   block); dynamic shared memory is a fresh heap block of exactly the launch's byte count per
//   block, filled with 0xff (reads before writes show up as NaN / -1), so ASan sees overflows.
// - `__syncthreads()` is a barrier identified by its call site: threads at different barriers,
//   a thread that finishes while others wait, or every thread waiting abort with a message.
// - `__shfl_*_sync` exchange values within a warp (32 consecutive threads) with CUDA's lane and
//   width rules; only the full warp's mask is emulated, any other mask aborts.
// - Atomics are real (relaxed) atomics, as on the GPU.
//
// SIMT_SCHEDULE picks the interleaving: `free` (the default: threads run freely, the OS
// interleaves them; the one TSan watches), or one thread at a time, each running until it
// reaches a barrier, a shuffle or its end: `forward` (always the lowest-numbered thread that
// can run), `reverse` (the highest), `random:SEED` (a seeded random one).
// Fault injection, for tests that show the harness fails when it should:
// SIMT_DROP_BARRIER=FILE:LINE makes the __syncthreads at that line of a file whose path ends in
// FILE a no-op; SIMT_SHARED_SHORT=N gives every block N bytes less dynamic shared memory.
#pragma once

#include <math.h>  // exp(float) and friends in the global namespace, as in CUDA device code

#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define TT_SIMT 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace simt {

[[noreturn]] inline void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs("simt: ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
  std::abort();
}

using Site = std::source_location;  // where a barrier or shuffle is called: its identity

inline bool same_site(const Site& a, const Site& b) {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

enum class Order { kFree, kForward, kReverse, kRandom };

struct Schedule {
  Order order = Order::kFree;
  uint64_t seed = 0;
};

inline Schedule schedule_from_env() {
  const char* s = std::getenv("SIMT_SCHEDULE");
  if (s == nullptr || !*s || !std::strcmp(s, "free")) return {};
  if (!std::strcmp(s, "forward")) return {Order::kForward};
  if (!std::strcmp(s, "reverse")) return {Order::kReverse};
  if (!std::strncmp(s, "random:", 7)) return {Order::kRandom, std::strtoull(s + 7, nullptr, 10)};
  fail("SIMT_SCHEDULE=%s: expected free, forward, reverse or random:SEED", s);
}

// One kernel launch: its threads, the barriers of the running block, its shared memory.
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t shared, unsigned first_block = 0)
      : grid_(grid), block_(block), first_block_(first_block), schedule_(schedule_from_env()) {
    if (grid.y * grid.z != 1 || block.y * block.z != 1) fail("only 1-D grids and blocks are emulated");
    if (block.x > 1024) fail("%u threads per block: CUDA allows at most 1024", block.x);
    n_ = static_cast<int>(block.x);
    const char* s = std::getenv("SIMT_SHARED_SHORT");
    const size_t short_by = s ? std::strtoull(s, nullptr, 10) : 0;
    shared_bytes_ = shared > short_by ? shared - short_by : 0;
    if (const char* d = std::getenv("SIMT_DROP_BARRIER"); d && std::strchr(d, ':')) {
      drop_file_.assign(d, std::strchr(d, ':'));
      drop_line_ = std::strtoul(std::strchr(d, ':') + 1, nullptr, 10);
    }
    groups_ = std::vector<Group>(1 + (n_ + 31) / 32);
    groups_[0].size = n_;
    for (size_t w = 1; w < groups_.size(); ++w) groups_[w].size = std::min(32, n_ - 32 * static_cast<int>(w - 1));
    state_.assign(n_, kRunnable);
    turn_ = std::vector<std::condition_variable>(n_);
    slots_.assign(n_, 0);
    rng_.seed(schedule_.seed);
  }

  // Runs body as every thread of every block.
  void run(const std::function<void()>& body) {
    if (n_ == 0 || grid_.x <= first_block_) return;
    new_block();
    token_ = token_mode() ? pick() : -1;
    std::vector<std::thread> threads;
    threads.reserve(n_);
    for (int t = 0; t < n_; ++t) threads.emplace_back([this, t, &body] { thread_main(t, body); });
    for (std::thread& thread : threads) thread.join();
  }

  // __syncthreads (group 0) and the warp-level rendezvous of shuffles (group 1 + warp).
  void sync(int group, const Site& site);
  void barrier(const Site& site) {
    if (drop_line_ == site.line() && std::string_view(site.file_name()).ends_with(drop_file_)) return;
    sync(0, site);
  }
  // A warp's lanes that exist (the last warp of a block may be partial), as a mask.
  unsigned warp_lanes(int warp) const {
    const int size = groups_[1 + warp].size;
    return size == 32 ? 0xffffffffu : (1u << size) - 1;
  }
  uint64_t& slot(int thread) { return slots_[thread]; }  // shuffle exchange, one per thread
  unsigned char* shared() { return shared_.get(); }

  static inline Launch* active = nullptr;     // the launch that is running
  static inline thread_local int thread = 0;  // this thread's index in its block

 private:
  enum State { kRunnable, kWaiting, kFinished };
  struct Group {  // the threads of a block (0) or a warp (1 + w) at a barrier
    std::mutex mu;  // free schedule; in token schedules everything is under mu_
    std::condition_variable released;
    int size = 0, arrived = 0, finished = 0;
    uint64_t generation = 0;
    Site site;
  };

  bool token_mode() const { return schedule_.order != Order::kFree; }

  void thread_main(int t, const std::function<void()>& body) {
    thread = t;
    threadIdx = {static_cast<unsigned>(t), 0, 0};
    blockDim = block_;
    gridDim = grid_;
    for (unsigned b = first_block_; b < grid_.x; ++b) {
      if (token_mode()) {
        std::unique_lock lock(mu_);
        turn_[t].wait(lock, [&] { return token_ == t; });
      }
      blockIdx = {b, 0, 0};
      body();
      finish(t);
    }
  }

  // A fresh block: barriers reset, new dynamic shared memory; called with every thread outside it.
  void new_block() {
    for (Group& g : groups_) g.arrived = g.finished = 0;
    state_.assign(n_, kRunnable);
    stalled_.store(0, std::memory_order_relaxed);
    done_ = 0;
    shared_.reset(new unsigned char[shared_bytes_]);
    std::memset(shared_.get(), 0xff, shared_bytes_);
  }

  // The thread to run next in a token schedule, or -1 when none can.
  int pick() {
    std::vector<int> ready;
    for (int t = 0; t < n_; ++t)
      if (state_[t] == kRunnable) ready.push_back(t);
    if (ready.empty()) return -1;
    if (schedule_.order == Order::kForward) return ready.front();
    if (schedule_.order == Order::kReverse) return ready.back();
    return ready[std::uniform_int_distribution<size_t>(0, ready.size() - 1)(rng_)];
  }

  // Token schedules: hand the turn to the next thread and, unless that is t, wait for it back.
  void pass(std::unique_lock<std::mutex>& lock, int t, bool wait) {
    token_ = pick();
    if (token_ < 0) {
      if (done_ == n_) return;  // the launch is over
      fail("deadlock in block %u: no thread can run, thread %d waits", blockIdx.x, t);
    }
    if (token_ != t) turn_[token_].notify_one();
    if (wait) turn_[t].wait(lock, [&] { return token_ == t; });
  }

  // Free schedule: count a thread that waits (1) or finished (1 + (1 << 32)); when every thread
  // waits or finished, and not all finished, none can release the others: a deadlock.
  void stall(uint64_t add, int t) {
    const uint64_t now = stalled_.fetch_add(add, std::memory_order_relaxed) + add;
    if ((now & 0xffffffffu) == static_cast<uint64_t>(n_) && (now >> 32) < static_cast<uint64_t>(n_))
      fail("deadlock in block %u: every thread waits or has finished (the last: thread %d)", blockIdx.x, t);
  }

  void finish(int t);

  dim3 grid_, block_;
  unsigned first_block_ = 0;  // the blocks before it are not run
  Schedule schedule_;
  int n_ = 0;
  size_t shared_bytes_ = 0;
  std::string drop_file_;
  unsigned drop_line_ = 0;
  std::vector<Group> groups_;
  std::unique_ptr<unsigned char[]> shared_;
  std::vector<uint64_t> slots_;
  std::mutex mu_;  // block ends, and everything in token schedules
  std::condition_variable block_done_;
  int done_ = 0;
  uint64_t blocks_done_ = 0;
  std::atomic<uint64_t> stalled_{0};  // free schedule: waiting threads + (finished threads << 32)
  std::vector<State> state_;          // token schedules
  std::vector<std::condition_variable> turn_;
  int token_ = -1;
  std::mt19937_64 rng_;
};

inline void Launch::sync(int group, const Site& site) {
  Group& g = groups_[group];
  const int t = thread;
  std::unique_lock lock(token_mode() ? mu_ : g.mu);
  const char* what = group == 0 ? "block" : "warp";
  if (g.finished)
    fail("thread %d waits at %s:%u, but %d thread(s) of its %s already finished (block %u)", t, site.file_name(),
         site.line(), g.finished, what, blockIdx.x);
  if (g.arrived && !same_site(g.site, site))
    fail("threads of one %s at different barriers: thread %d at %s:%u, %d thread(s) at %s:%u (block %u)", what, t,
         site.file_name(), site.line(), g.arrived, g.site.file_name(), g.site.line(), blockIdx.x);
  if (g.arrived == 0) g.site = site;
  const int first = group == 0 ? 0 : 32 * (group - 1);
  if (++g.arrived == g.size) {  // the last one releases the group
    g.arrived = 0;
    ++g.generation;
    if (token_mode()) {
      for (int m = first; m < first + g.size; ++m) state_[m] = kRunnable;
      pass(lock, t, true);
    } else {
      stalled_.fetch_sub(g.size - 1, std::memory_order_relaxed);
      g.released.notify_all();
    }
    return;
  }
  if (token_mode()) {
    state_[t] = kWaiting;
    pass(lock, t, true);
  } else {
    stall(1, t);
    const uint64_t generation = g.generation;
    g.released.wait(lock, [&] { return g.generation != generation; });
  }
}

inline void Launch::finish(int t) {
  for (int group : {0, 1 + t / 32}) {  // nobody of its block or warp may still wait for it
    Group& g = groups_[group];
    std::unique_lock lock(token_mode() ? mu_ : g.mu);
    if (g.arrived)
      fail("thread %d finished while %d thread(s) of its %s wait at %s:%u (block %u)", t, g.arrived,
           group == 0 ? "block" : "warp", g.site.file_name(), g.site.line(), blockIdx.x);
    ++g.finished;
  }
  std::unique_lock lock(mu_);
  if (!token_mode()) stall(1 + (uint64_t{1} << 32), t);
  const bool last_block = blockIdx.x + 1 == grid_.x;
  state_[t] = kFinished;
  if (++done_ == n_ && !last_block) {  // the block is over: the next one starts
    new_block();
    ++blocks_done_;
    block_done_.notify_all();
  } else if (!token_mode() && !last_block) {
    const uint64_t blocks = blocks_done_;
    block_done_.wait(lock, [&] { return blocks_done_ != blocks; });
  }
  if (token_mode()) pass(lock, t, false);  // the next block's turn is awaited in thread_main
}

// Shuffles: every lane of the warp deposits its value, then reads lane source(lane)'s.
template <typename T, typename Source>
T warp_exchange(unsigned mask, T value, int width, const Site& site, Source source) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t));
  Launch& l = *Launch::active;
  const int t = Launch::thread, warp = t / 32, lane = t % 32;
  const unsigned lanes = l.warp_lanes(warp);
  if (mask != lanes)
    fail("thread %d at %s:%u: shuffle mask 0x%08x, but warp %d has lanes 0x%08x (only full warps are emulated)", t,
         site.file_name(), site.line(), mask, warp, lanes);
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail("thread %d at %s:%u: shuffle width %d is not a power of two <= 32", t, site.file_name(), site.line(), width);
  std::memcpy(&l.slot(t), &value, sizeof(T));
  l.sync(1 + warp, site);
  const int src = source(lane);
  T out = value;
  if (src != lane) {
    if (src < 0 || src > 31 || !(lanes >> src & 1))
      fail("thread %d at %s:%u: shuffle reads lane %d, which warp %d does not have", t, site.file_name(), site.line(),
           src, warp);
    std::memcpy(&out, &l.slot(32 * warp + src), sizeof(T));
  }
  l.sync(1 + warp, site);  // every lane has read: the slots may be reused
  return out;
}

// Runs kernel body `body` (a call of the kernel with its arguments) as grid x block threads: blocks
// first_block .. grid.x - 1 of the grid (all of them by default).
inline void launch(dim3 grid, dim3 block, size_t shared, const std::function<void()>& body,
                   unsigned first_block = 0) {
  Launch l(grid, block, shared, first_block);
  Launch::active = &l;
  l.run(body);
  Launch::active = nullptr;
}

}  // namespace simt

// ----------------------------------------------------------------------------- CUDA's device API

inline unsigned char* dynamic_shared_memory() { return simt::Launch::active->shared(); }

inline void __syncthreads(const simt::Site& site = simt::Site::current()) { simt::Launch::active->barrier(site); }

inline void __syncwarp(unsigned mask = 0xffffffffu, const simt::Site& site = simt::Site::current()) {
  simt::warp_exchange(mask, 0, 32, site, [](int lane) { return lane; });
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const simt::Site& site = simt::Site::current()) {
  return simt::warp_exchange(mask, var, width, site,
                             [&](int lane) { return (lane & ~(width - 1)) + (src_lane & (width - 1)); });
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const simt::Site& site = simt::Site::current()) {
  return simt::warp_exchange(mask, var, width, site, [&](int lane) {
    return lane % width >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  });
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const simt::Site& site = simt::Site::current()) {
  return simt::warp_exchange(mask, var, width, site, [&](int lane) {
    return lane % width + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  });
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const simt::Site& site = simt::Site::current()) {
  return simt::warp_exchange(mask, var, width, site, [&](int lane) {
    const int src = lane ^ lane_mask;  // a later group of `width` lanes: the own value
    return src >= (lane / width + 1) * width ? lane : src;
  });
}

// Atomics: relaxed, as CUDA's (so TSan sees no synchronization in them); they return the old value.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;
}
// Store `value` where `better(value, current)`, as a compare-and-swap loop; returns the old value.
template <typename T, typename Better>
T atomic_store_if(T* address, T value, Better better) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (better(value, old) && !a.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  return atomic_store_if(address, value, [](T v, T old) { return old < v; });
}
template <typename T>
T atomicMin(T* address, T value) {
  return atomic_store_if(address, value, [](T v, T old) { return v < old; });
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t{a} * b) >> 32); }
