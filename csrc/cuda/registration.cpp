// CUDA implementations of the tt ops (schemas in csrc/registration.cpp); compiled only in CUDA builds.
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(tt, CUDA, m) {
  m.impl("sample_next", &tt::sample_next_cuda);
  m.impl("beam_select", &tt::beam_select_cuda);
  m.impl("beam_expand", &tt::beam_expand_cuda);
  m.impl("philox_uniform", &tt::philox_uniform_cuda);
}
