// tt::dropout_mask and tt::dropout_apply on CPU: training's dropout with a counter-based generator.
// Element i is kept where word i % 4 of Philox4x32-10 at counter (i / 4, offset) and key `seed` is at
// least p * 2^32 (the drop rate p to 2^-32); the draw is a function of (seed, offset, i) alone, so
// threads fill the mask in any order and the result never depends on how many there are.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "../ops.h"
#include "../philox.h"

namespace tt {

namespace {

constexpr int64_t kGrainWords = 16384;  // Philox calls per task

// Words [begin, end) of the mask (4 elements a word); the loop over words vectorizes per ISA.
__attribute__((target_clones("avx512f", "avx2", "default")))
void fill_mask(bool* mask, int64_t begin, int64_t end, uint64_t seed, uint64_t offset, uint32_t threshold) {
  for (int64_t w = begin; w < end; ++w) {
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(w), static_cast<uint32_t>(w >> 32),
                                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    mask[4 * w] = r.v[0] >= threshold;
    mask[4 * w + 1] = r.v[1] >= threshold;
    mask[4 * w + 2] = r.v[2] >= threshold;
    mask[4 * w + 3] = r.v[3] >= threshold;
  }
}

}  // namespace

void dropout_mask_cpu(int64_t seed, int64_t offset, double p, at::Tensor& mask) {
  check_dropout_mask(p, mask);
  bool* data = mask.data_ptr<bool>();
  const int64_t n = mask.numel(), whole = n / 4;
  const uint32_t threshold = static_cast<uint32_t>(std::llround(p * 4294967296.0));  // p < 1: below 2^32
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  at::parallel_for(0, whole, kGrainWords,
                   [&](int64_t begin, int64_t end) { fill_mask(data, begin, end, s, o, threshold); });
  if (n > 4 * whole) {  // the last word's first n % 4 elements
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(whole), static_cast<uint32_t>(whole >> 32),
                                       static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32),
                                       static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
    for (int64_t i = 4 * whole; i < n; ++i) data[i] = r.v[i - 4 * whole] >= threshold;
  }
}

void dropout_apply_cpu(const at::Tensor& x, const at::Tensor& mask, double scale, at::Tensor& out) {
  check_dropout_apply(x, mask, out);
  const bool* keep = mask.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "tt::dropout_apply", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t factor = static_cast<acc_t>(scale);
    at::parallel_for(0, x.numel(), 4 * kGrainWords, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)  // a product, as torch's dropout (NaN stays NaN), without a branch
        o[i] = static_cast<scalar_t>(static_cast<acc_t>(in[i]) * (keep[i] ? factor : acc_t(0)));
    });
  });
}

}  // namespace tt
