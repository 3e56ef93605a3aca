// Input checks shared by the CPU and CUDA stochastic binarization kernels.
#pragma once
#include "ops/stable.h"

namespace cibhash {

inline bool is_binarize_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline void check_binarize_logits(const Tensor& logits, const char* op) {
  STD_TORCH_CHECK(is_binarize_dtype(logits.scalar_type()), op,
                  ": expected logits of dtype float32, float16 or bfloat16, got ", logits.scalar_type());
}

inline void check_binarize_backward(const Tensor& grad, const Tensor& logits) {
  check_binarize_logits(logits, "stochastic_binarize_backward");
  STD_TORCH_CHECK(grad.sizes().equals(logits.sizes()), "stochastic_binarize_backward: expected grad_codes of shape ",
                  shape_string(logits), ", got ", shape_string(grad));
  STD_TORCH_CHECK(grad.scalar_type() == logits.scalar_type(),
                  "stochastic_binarize_backward: expected grad_codes of dtype ", logits.scalar_type(), ", got ",
                  grad.scalar_type());
  STD_TORCH_CHECK(grad.device() == logits.device(), "stochastic_binarize_backward: expected grad_codes on ",
                  device_string(logits), ", got ", device_string(grad));
}

}  // namespace cibhash
