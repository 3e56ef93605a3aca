// Input checks shared by the CPU and CUDA pack_bits / unpack_bits implementations.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace cibhash {

inline int64_t packed_width(int64_t nbits) { return (nbits + 7) / 8; }

inline void check_pack_bits_input(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "pack_bits: expected x with at least 1 dimension [..., L], got a ",
              x.dim(), "-d tensor");
  TORCH_CHECK_VALUE(x.size(-1) >= 1, "pack_bits: expected at least 1 bit in the last dimension, got ",
              x.size(-1));
  TORCH_CHECK_TYPE(!x.is_complex(), "pack_bits: expected a real, integer or bool tensor, got ",
              x.scalar_type());
}

inline void check_unpack_bits_input(const at::Tensor& codes, int64_t nbits) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, "unpack_bits: expected codes of dtype uint8, got ",
              codes.scalar_type());
  TORCH_CHECK_VALUE(codes.dim() >= 1, "unpack_bits: expected codes with at least 1 dimension [..., B], got a ",
              codes.dim(), "-d tensor");
  TORCH_CHECK_VALUE(nbits >= 1, "unpack_bits: expected nbits >= 1, got ", nbits);
  TORCH_CHECK_VALUE(packed_width(nbits) == codes.size(-1), "unpack_bits: ", nbits, " bits need ",
              packed_width(nbits), " bytes per code, but codes have ", codes.size(-1));
}

inline std::vector<int64_t> with_last_dim(const at::Tensor& t, int64_t last) {
  auto sizes = t.sizes().vec();
  sizes.back() = last;
  return sizes;
}

}  // namespace cibhash
