// Runs tt's CUDA kernels under the SIMT emulator for tests/test_simt.py:
//   driver KERNEL IN OUT
// reads cases for KERNEL from the file IN (little-endian fields, as the test writes them), launches
// the kernel for each with its launcher's configuration (from the kernel header) and writes the
// outputs, poisoned beforehand, to OUT. KERNEL: sample_next, beam_select, beam_expand, philox_uniform,
// philox_block (emulated), philox_host (csrc/philox.h called on the host, no emulation), or
// selftest (the emulator's own checks, tests/simt/selftest.cuh).
// sample_next_tail, beam_select_tail, beam_expand_tail: the kernel on a grid too large to hold (rows
// or plans times their size past 2^31 elements), of which the input gives only the last row or plan,
// and only that block runs; its arrays are sparse (address space, the pages touched the memory used),
// so a 32-bit index product reads or writes elsewhere than that block's data.
#include "simt.h"  // first: the kernel headers build on its CUDA API

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/kernels/beam_expand.cuh"
#include "cuda/kernels/beam_select.cuh"
#include "cuda/kernels/philox.cuh"
#include "cuda/kernels/sample_next.cuh"
#include "selftest.cuh"

namespace {

struct Reader {
  FILE* f;
  bool more() {
    const int c = std::fgetc(f);
    return c != EOF && std::ungetc(c, f) != EOF;
  }
  template <typename T>
  std::vector<T> array(int64_t n) {
    std::vector<T> v(n);
    if (n > 0 && std::fread(v.data(), sizeof(T), n, f) != static_cast<size_t>(n)) simt::fail("driver: the input ends early");
    return v;
  }
  template <typename T>
  T get() {
    return array<T>(1)[0];
  }
};

struct Writer {
  FILE* f;
  template <typename T>
  void put(const T* p, int64_t n) {
    if (n > 0) std::fwrite(p, sizeof(T), n, f);
  }
  template <typename T>
  void put(const std::vector<T>& v) {
    put(v.data(), static_cast<int64_t>(v.size()));
  }
};

// n elements of T: a heap vector (ASan sees a step past either end), or, sparse, address space only:
// an anonymous MAP_NORESERVE mapping, zero-filled, whose written pages are the memory used, ending at
// an inaccessible page (a step past the end faults). The _tail kernels' arrays are sparse: full-size,
// one block's part real data.
template <typename T>
class Array {
 public:
  Array(int64_t n, bool sparse) {
    if (!sparse) {
      dense_.resize(n);
      data_ = dense_.data();
      return;
    }
    const size_t page = 4096, bytes = static_cast<size_t>(n) * sizeof(T);
    mapped_ = (bytes + page - 1) / page * page + page;  // the pages holding the array, then a guard page
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) simt::fail("driver: cannot map %zu bytes of address space for a sparse array", mapped_);
    map_ = static_cast<unsigned char*>(p);
    if (mprotect(map_ + mapped_ - page, page, PROT_NONE) != 0) simt::fail("driver: mprotect failed");
    data_ = reinterpret_cast<T*>(map_ + mapped_ - page - bytes);
  }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  ~Array() {
    if (map_) munmap(map_, mapped_);
  }
  T* data() const { return data_; }

 private:
  std::vector<T> dense_;
  unsigned char* map_ = nullptr;
  size_t mapped_ = 0;
  T* data_ = nullptr;
};

// In: rows, V, temperature, top_k (<= 0: off), cdf (< 0: off), has_mids, rng state (seed, offset),
// logits [rows, V] (tail: the last row's [V] only), midpoints [V - 1] when has_mids (in acc_t, as
// tt.ops passes them).
// Out: tokens [rows] int64, expectation [rows] acc_t when has_mids (tail: the last row's).
template <typename scalar_t>
void sample_next(Reader& in, Writer& out, bool tail) {
  using acc_t = scalar_t;  // at::opmath_type of float and double
  const int64_t rows = in.get<int64_t>(), V = in.get<int64_t>();
  const double temperature = in.get<double>();
  const int64_t top_k = in.get<int64_t>();
  const double cdf = in.get<double>();
  const bool has_mids = in.get<int64_t>() != 0;
  const std::vector<int64_t> state = in.array<int64_t>(2);
  const int64_t first = tail ? rows - 1 : 0;  // the first row given and run
  const std::vector<scalar_t> given = in.array<scalar_t>((rows - first) * V);
  const std::vector<acc_t> mids = has_mids ? in.array<acc_t>(V - 1) : std::vector<acc_t>();
  if (V > tt::kSampleNextMaxVocab) simt::fail("sample_next: at most %d tokens per row", tt::kSampleNextMaxVocab);
  Array<scalar_t> logits(rows * V, tail);
  Array<int64_t> tokens(rows, tail);
  Array<acc_t> expectation(has_mids ? rows : 0, tail);
  std::copy(given.begin(), given.end(), logits.data() + first * V);
  std::fill(tokens.data() + first, tokens.data() + rows, -1);
  if (has_mids) std::fill(expectation.data() + first, expectation.data() + rows, acc_t(NAN));
  const tt::LaunchConfig cfg = tt::sample_next_launch<acc_t>(static_cast<int>(rows), static_cast<int>(V));
  simt::launch(
      cfg.blocks, cfg.threads, cfg.shared,
      [&] {
        tt::sample_next_kernel<scalar_t, acc_t>(logits.data(), static_cast<int>(V), cfg.P, temperature,
                                                static_cast<int>(top_k), cdf, has_mids ? mids.data() : nullptr,
                                                state.data(), tokens.data(), has_mids ? expectation.data() : nullptr);
      },
      static_cast<unsigned>(first));
  out.put(tokens.data() + first, rows - first);
  out.put(expectation.data() + first, has_mids ? rows - first : 0);
}

// In: B, M, k, group, S, L, scores [B, M], terms [B*M, S], tokens [B*M, L] int64 (tail: the last
// plan's scores [M] and its candidates' terms [M, S] and tokens [M, L], in candidate order).
// Out: values [B, k], indices [B, k], rows [B*k], terms_out [B*k, S], tokens_out [B*k, L] (tail: the
// last plan's).
template <typename score_t, typename term_t>
void beam_select(Reader& in, Writer& out, bool tail) {
  const std::vector<int64_t> d = in.array<int64_t>(6);
  const int B = static_cast<int>(d[0]), M = static_cast<int>(d[1]), k = static_cast<int>(d[2]);
  const int group = static_cast<int>(d[3]);
  const int64_t S = d[4], L = d[5];
  const int64_t first = tail ? B - 1 : 0, n = (B - first) * M;  // the first plan given and run; its candidates
  const std::vector<score_t> given_scores = in.array<score_t>(n);
  const std::vector<term_t> given_terms = in.array<term_t>(n * S);
  const std::vector<int64_t> given_tokens = in.array<int64_t>(n * L);
  if (M > tt::kBeamSelectMaxCandidates) simt::fail("beam_select: at most %d candidates", tt::kBeamSelectMaxCandidates);
  Array<score_t> scores(int64_t{B} * M, tail);
  Array<term_t> terms(int64_t{B} * M * S, tail);
  Array<int64_t> tokens(int64_t{B} * M * L, tail);
  std::copy(given_scores.begin(), given_scores.end(), scores.data() + first * M);
  if (!tail) {
    std::copy(given_terms.begin(), given_terms.end(), terms.data());
    std::copy(given_tokens.begin(), given_tokens.end(), tokens.data());
  } else {  // candidate m of plan b is row (m / group) * B * group + b * group + m % group
    for (int64_t m = 0; m < M; ++m) {
      const int64_t row = (m / group) * B * group + first * group + m % group;
      std::copy_n(given_terms.data() + m * S, S, terms.data() + row * S);
      std::copy_n(given_tokens.data() + m * L, L, tokens.data() + row * L);
    }
  }
  const int64_t kept = (B - first) * k;  // outputs of the plans run, poisoned
  Array<score_t> values(int64_t{B} * k, tail);
  Array<int64_t> indices(int64_t{B} * k, tail), rows(int64_t{B} * k, tail), tokens_out(int64_t{B} * k * L, tail);
  Array<term_t> terms_out(int64_t{B} * k * S, tail);
  std::fill_n(values.data() + first * k, kept, score_t(NAN));
  std::fill_n(indices.data() + first * k, kept, -1);
  std::fill_n(rows.data() + first * k, kept, -1);
  std::fill_n(terms_out.data() + first * k * S, kept * S, term_t(NAN));
  std::fill_n(tokens_out.data() + first * k * L, kept * L, -1);
  const tt::LaunchConfig cfg = tt::beam_select_launch<score_t>(B, M);
  simt::launch(
      cfg.blocks, cfg.threads, cfg.shared,
      [&] {
        tt::beam_select_kernel<score_t, term_t>(scores.data(), B, M, cfg.P, k, group, terms.data(), S, tokens.data(),
                                                L, values.data(), indices.data(), rows.data(), terms_out.data(),
                                                tokens_out.data());
      },
      static_cast<unsigned>(first));
  out.put(values.data() + first * k, kept);
  out.put(indices.data() + first * k, kept);
  out.put(rows.data() + first * k, kept);
  out.put(terms_out.data() + first * k * S, kept * S);
  out.put(tokens_out.data() + first * k * L, kept * L);
}

template <typename score_t>
void beam_select_terms(Reader& in, Writer& out, int64_t term_size, bool tail) {
  if (term_size == 4) beam_select<score_t, float>(in, out, tail);
  else beam_select<score_t, double>(in, out, tail);
}

// In: B, W, V, k, scores [B, W] float32, logp [B*W, V] float32 (tail: the last plan's scores [W] and
// logp [W, V]).
// Out: values [B, k] float32, parents [B, k] int64, tokens [B, k] int64 (tail: the last plan's).
void beam_expand(Reader& in, Writer& out, bool tail) {
  const std::vector<int64_t> d = in.array<int64_t>(4);
  const int B = static_cast<int>(d[0]), W = static_cast<int>(d[1]), V = static_cast<int>(d[2]);
  const int k = static_cast<int>(d[3]);
  const int64_t first = tail ? B - 1 : 0;  // the first plan given and run
  const std::vector<float> given_scores = in.array<float>((B - first) * W);
  const std::vector<float> given_logp = in.array<float>((B - first) * W * V);
  if (k < 1 || k > W * V || k > tt::kBeamExpandMaxK) simt::fail("beam_expand: k=%d out of range", k);
  Array<float> scores(int64_t{B} * W, tail), logp(int64_t{B} * W * V, tail), values(int64_t{B} * k, tail);
  Array<int64_t> parents(int64_t{B} * k, tail), tokens(int64_t{B} * k, tail);
  std::copy(given_scores.begin(), given_scores.end(), scores.data() + first * W);
  std::copy(given_logp.begin(), given_logp.end(), logp.data() + first * W * V);
  const int64_t kept = (B - first) * k;  // outputs of the plans run, poisoned
  std::fill_n(values.data() + first * k, kept, NAN);
  std::fill_n(parents.data() + first * k, kept, -1);
  std::fill_n(tokens.data() + first * k, kept, -1);
  const tt::LaunchConfig cfg = tt::beam_expand_launch(B, W * V, k);
  simt::launch(
      cfg.blocks, cfg.threads, cfg.shared,
      [&] {
        tt::beam_expand_kernel(scores.data(), logp.data(), W, V, k, cfg.P, values.data(), parents.data(),
                               tokens.data());
      },
      static_cast<unsigned>(first));
  out.put(values.data() + first * k, kept);
  out.put(parents.data() + first * k, kept);
  out.put(tokens.data() + first * k, kept);
}

// In: seed, offset, n. Out: uniforms [n] float64.
void philox_uniform(Reader& in, Writer& out) {
  const std::vector<int64_t> d = in.array<int64_t>(3);
  std::vector<double> u(d[2], NAN);
  const tt::LaunchConfig cfg = tt::philox_launch(d[2]);
  simt::launch(cfg.blocks, cfg.threads, cfg.shared, [&] {
    tt::philox_uniform_kernel(static_cast<uint64_t>(d[0]), static_cast<uint64_t>(d[1]), d[2], u.data());
  });
  out.put(u);
}

// In: n, blocks [n, 6] uint32 (counter words, key words). Out: [n, 4] uint32.
void philox_block(Reader& in, Writer& out, bool emulated) {
  const int64_t n = in.get<int64_t>();
  const std::vector<uint32_t> ctr_key = in.array<uint32_t>(6 * n);
  std::vector<uint32_t> words(4 * n, 0);
  if (emulated) {
    const tt::LaunchConfig cfg = tt::philox_launch(n);
    simt::launch(cfg.blocks, cfg.threads, cfg.shared,
                 [&] { tt::philox_block_kernel(ctr_key.data(), n, words.data()); });
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t* c = &ctr_key[6 * i];
      const tt::Philox4x32 r = tt::philox4x32_10(c[0], c[1], c[2], c[3], c[4], c[5]);
      std::memcpy(&words[4 * i], r.v, sizeof(r.v));
    }
  }
  out.put(words);
}

// In: name, threads, blocks (int64 each; name 0 shuffles, 1 atomics, 2 divergent barriers, 3 an
// early exit, 4 a partial shuffle mask). Out: the shuffles' [4, 6, threads] or the atomics' 5 int32 + 1 float.
void selftest(Reader& in, Writer& out) {
  const std::vector<int64_t> d = in.array<int64_t>(3);
  const unsigned threads = static_cast<unsigned>(d[1]), blocks = static_cast<unsigned>(d[2]);
  namespace st = simt_selftest;
  std::vector<int> ints(4 * st::kShuffleWidths * threads, -1);
  std::vector<float> sum(1, 0.0f);
  if (d[0] == 1) ints = {0, -1, 1, 0, 0};
  simt::launch(blocks, threads, 0, [&] {
    switch (d[0]) {
      case 0: st::shuffles(ints.data()); break;
      case 1: st::atomics(ints.data(), sum.data()); break;
      case 2: st::divergent_barriers(); break;
      case 3: st::early_exit(); break;
      default: st::partial_mask(ints.data());
    }
  });
  out.put(ints);
  if (d[0] == 1) out.put(sum);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) simt::fail("usage: driver KERNEL IN OUT");
  FILE* in_file = std::fopen(argv[2], "rb");
  FILE* out_file = std::fopen(argv[3], "wb");
  if (!in_file || !out_file) simt::fail("driver: cannot open %s or %s", argv[2], argv[3]);
  Reader in{in_file};
  Writer out{out_file};
  const std::string kernel = argv[1];
  const bool tail = kernel.ends_with("_tail");
  const std::string base = tail ? kernel.substr(0, kernel.size() - 5) : kernel;
  while (in.more()) {
    if (base == "sample_next") {
      if (in.get<int64_t>() == 4) sample_next<float>(in, out, tail);
      else sample_next<double>(in, out, tail);
    } else if (base == "beam_select") {
      const int64_t score_size = in.get<int64_t>(), term_size = in.get<int64_t>();
      if (score_size == 4) beam_select_terms<float>(in, out, term_size, tail);
      else beam_select_terms<double>(in, out, term_size, tail);
    } else if (base == "beam_expand") {
      beam_expand(in, out, tail);
    } else if (kernel == "philox_uniform") {
      philox_uniform(in, out);
    } else if (kernel == "philox_block" || kernel == "philox_host") {
      philox_block(in, out, kernel == "philox_block");
    } else if (kernel == "selftest") {
      selftest(in, out);
    } else {
      simt::fail("driver: unknown kernel %s", kernel.c_str());
    }
  }
  return std::fclose(out_file) == 0 ? 0 : 1;
}
