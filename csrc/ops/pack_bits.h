// Input checks shared by the CPU and CUDA pack_bits / unpack_bits implementations.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace cibhash {

inline int64_t packed_width(int64_t nbits) { return (nbits + 7) / 8; }

// The dtypes both kernels handle (float8, quantized and sub-byte types are refused on either
// device with the same TypeError).
inline bool is_pack_bits_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
    case at::kUInt16: case at::kUInt32: case at::kUInt64: case at::kHalf: case at::kBFloat16: case at::kFloat:
    case at::kDouble:
      return true;
    default:
      return false;
  }
}

inline void check_pack_bits_input(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "pack_bits: expected x with at least 1 dimension [..., L], got a ",
              x.dim(), "-d tensor");
  TORCH_CHECK_VALUE(x.size(-1) >= 1, "pack_bits: expected at least 1 bit in the last dimension, got ",
              x.size(-1));
  TORCH_CHECK_TYPE(is_pack_bits_dtype(x.scalar_type()), "pack_bits: expected a real, integer or bool tensor, got ",
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
