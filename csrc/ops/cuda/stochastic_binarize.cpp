// CUDA registration of stochastic_binarize_forward / _backward: torch-side checks and launch; the
// kernels are in ops/cuda/stochastic_binarize_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/cuda/launchers.h"
#include "ops/stochastic_binarize.h"

namespace cibhash {
namespace {

// Only called after check_binarize_logits, so the three dtypes are the only ones left.
gpu::FloatType float_type(at::ScalarType t) {
  if (t == at::kHalf) return gpu::FloatType::kHalf;
  if (t == at::kBFloat16) return gpu::FloatType::kBFloat16;
  return gpu::FloatType::kFloat;
}

at::Tensor stochastic_binarize_forward_cuda(const at::Tensor& logits, bool stochastic, int64_t seed, int64_t offset) {
  check_binarize_logits(logits, "stochastic_binarize_forward");
  if (logits.numel() == 0) return at::empty_like(logits, at::MemoryFormat::Contiguous);
  const auto z = logits.contiguous();
  const c10::cuda::CUDAGuard guard(z.device());
  auto out = at::empty_like(z);
  C10_CUDA_CHECK(gpu::launch_stochastic_binarize_forward(
      z.const_data_ptr(), out.mutable_data_ptr(), float_type(z.scalar_type()), z.numel(), stochastic,
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor stochastic_binarize_backward_cuda(const at::Tensor& grad_codes, const at::Tensor& logits) {
  check_binarize_backward(grad_codes, logits);
  if (logits.numel() == 0) return at::empty_like(logits, at::MemoryFormat::Contiguous);
  const auto z = logits.contiguous();
  const auto g = grad_codes.contiguous();
  const c10::cuda::CUDAGuard guard(z.device());
  auto out = at::empty_like(z);
  C10_CUDA_CHECK(gpu::launch_stochastic_binarize_backward(g.const_data_ptr(), z.const_data_ptr(),
                                                          out.mutable_data_ptr(), float_type(z.scalar_type()),
                                                          z.numel(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("stochastic_binarize_forward", &stochastic_binarize_forward_cuda);
  m.impl("stochastic_binarize_backward", &stochastic_binarize_backward_cuda);
}

}  // namespace cibhash
