// tt::philox_uniform on CPU: the host path of csrc/philox.h.
#include "../ops.h"
#include "../philox.h"

namespace tt {

void philox_uniform_cpu(int64_t seed, int64_t offset, at::Tensor& out) {
  check_philox_uniform(out);
  double* data = out.data_ptr<double>();
  for (int64_t i = 0; i < out.numel(); ++i)
    data[i] = philox_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint64_t>(i));
}

}  // namespace tt
