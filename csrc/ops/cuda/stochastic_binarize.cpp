// CUDA registration of stochastic_binarize_forward / _backward: torch-side checks and launch; the
// kernels are in ops/cuda/stochastic_binarize_kernel.cu.
#include "ops/cuda/launchers.h"
#include "ops/cuda/stable_cuda.h"
#include "ops/stochastic_binarize.h"

namespace cibhash {
namespace {

// Only called after check_binarize_logits, so the three dtypes are the only ones left.
gpu::FloatType float_type(ScalarType t) {
  if (t == ScalarType::Half) return gpu::FloatType::kHalf;
  if (t == ScalarType::BFloat16) return gpu::FloatType::kBFloat16;
  return gpu::FloatType::kFloat;
}

Tensor stochastic_binarize_forward_cuda(const Tensor& logits, bool stochastic, int64_t seed, int64_t offset) {
  check_binarize_logits(logits, "stochastic_binarize_forward");
  if (logits.numel() == 0) return empty_like_device(logits.sizes().vec(), logits.scalar_type(), logits);
  const Tensor z = as_contiguous(logits);
  const CudaGuard guard(z.get_device_index());
  Tensor out = torch::stable::empty_like(z);
  STD_CUDA_CHECK(gpu::launch_stochastic_binarize_forward(
      z.const_data_ptr(), out.mutable_data_ptr(), float_type(z.scalar_type()), z.numel(), stochastic,
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), current_cuda_stream(z)));
  return out;
}

Tensor stochastic_binarize_backward_cuda(const Tensor& grad_codes, const Tensor& logits) {
  check_binarize_backward(grad_codes, logits);
  if (logits.numel() == 0) return empty_like_device(logits.sizes().vec(), logits.scalar_type(), logits);
  const Tensor z = as_contiguous(logits);
  const Tensor g = as_contiguous(grad_codes);
  const CudaGuard guard(z.get_device_index());
  Tensor out = torch::stable::empty_like(z);
  STD_CUDA_CHECK(gpu::launch_stochastic_binarize_backward(g.const_data_ptr(), z.const_data_ptr(),
                                                          out.mutable_data_ptr(), float_type(z.scalar_type()),
                                                          z.numel(), current_cuda_stream(z)));
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("stochastic_binarize_forward", TORCH_BOX(&stochastic_binarize_forward_cuda));
  m.impl("stochastic_binarize_backward", TORCH_BOX(&stochastic_binarize_backward_cuda));
}

}  // namespace cibhash
