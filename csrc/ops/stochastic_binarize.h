// Input checks shared by the CPU and CUDA stochastic binarization kernels.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace cibhash {

inline bool is_binarize_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_binarize_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK_TYPE(is_binarize_dtype(logits.scalar_type()), op,
              ": expected logits of dtype float32, float16 or bfloat16, got ", logits.scalar_type());
}

inline void check_binarize_backward(const at::Tensor& grad, const at::Tensor& logits) {
  check_binarize_logits(logits, "stochastic_binarize_backward");
  TORCH_CHECK_VALUE(grad.sizes() == logits.sizes(), "stochastic_binarize_backward: expected grad_codes of shape ",
              logits.sizes(), ", got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == logits.scalar_type(),
              "stochastic_binarize_backward: expected grad_codes of dtype ", logits.scalar_type(),
              ", got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == logits.device(),
              "stochastic_binarize_backward: expected grad_codes on ", logits.device(), ", got ",
              grad.device());
}

}  // namespace cibhash
