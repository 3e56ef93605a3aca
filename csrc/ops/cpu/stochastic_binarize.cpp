// CPU kernels of the stochastic binary layer: forward (Philox uniforms drawn inside the kernel,
// no noise tensor) and the fused straight-through backward grad * p * (1 - p).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/binarize_math.h"
#include "ops/stochastic_binarize.h"

namespace cibhash {
namespace {

// Work is split in Philox blocks of 4 consecutive elements: one generator call feeds 4 bits, and
// element i always takes word i % 4 of block i / 4, whatever the thread split.
template <typename T>
void binarize_forward(const T* z, T* out, int64_t n, bool stochastic, uint64_t seed, uint64_t offset) {
  const int64_t blocks = (n + 3) / 4;
  at::parallel_for(0, blocks, 2048, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t first = g * 4;
      const int64_t count = std::min<int64_t>(4, n - first);
      Philox4 words{{0, 0, 0, 0}};
      if (stochastic) words = philox_block(seed, offset, static_cast<uint64_t>(g));
      for (int64_t l = 0; l < count; ++l) {
        const float u = word_to_uniform(words.v[l]);
        out[first + l] = binarize_bit(static_cast<float>(z[first + l]), stochastic, u) ? T(1) : T(0);
      }
    }
  });
}

at::Tensor stochastic_binarize_forward_cpu(const at::Tensor& logits, bool stochastic, int64_t seed, int64_t offset) {
  check_binarize_logits(logits, "stochastic_binarize_forward");
  const auto z = logits.contiguous();
  auto out = at::empty_like(z);
  if (z.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "stochastic_binarize_forward_cpu", [&] {
    binarize_forward<scalar_t>(z.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), z.numel(), stochastic,
                               static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  });
  return out;
}

at::Tensor stochastic_binarize_backward_cpu(const at::Tensor& grad_codes, const at::Tensor& logits) {
  check_binarize_backward(grad_codes, logits);
  const auto z = logits.contiguous();
  const auto g = grad_codes.contiguous();
  auto out = at::empty_like(z);
  if (z.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "stochastic_binarize_backward_cpu", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.numel(), 8192, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        op[i] = static_cast<scalar_t>(binarize_grad(static_cast<float>(gp[i]), static_cast<float>(zp[i])));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cibhash_ext, CPU, m) {
  m.impl("stochastic_binarize_forward", &stochastic_binarize_forward_cpu);
  m.impl("stochastic_binarize_backward", &stochastic_binarize_backward_cpu);
}

}  // namespace cibhash
