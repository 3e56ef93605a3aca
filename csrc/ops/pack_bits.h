// Input checks shared by the CPU and CUDA pack_bits / unpack_bits implementations.
#pragma once
#include "ops/stable.h"

namespace cibhash {

inline int64_t packed_width(int64_t nbits) { return (nbits + 7) / 8; }

// The dtypes both kernels handle (float8, quantized and sub-byte types are refused on either
// device with the same error).
inline bool is_pack_bits_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Bool: case ScalarType::Byte: case ScalarType::Char: case ScalarType::Short:
    case ScalarType::Int: case ScalarType::Long: case ScalarType::UInt16: case ScalarType::UInt32:
    case ScalarType::UInt64: case ScalarType::Half: case ScalarType::BFloat16: case ScalarType::Float:
    case ScalarType::Double:
      return true;
    default:
      return false;
  }
}

inline void check_pack_bits_input(const Tensor& x) {
  STD_TORCH_CHECK(x.dim() >= 1, "pack_bits: expected x with at least 1 dimension [..., L], got a ", x.dim(),
                  "-d tensor");
  STD_TORCH_CHECK(last_dim(x) >= 1, "pack_bits: expected at least 1 bit in the last dimension, got ", last_dim(x));
  STD_TORCH_CHECK(is_pack_bits_dtype(x.scalar_type()), "pack_bits: expected a real, integer or bool tensor, got ",
                  x.scalar_type());
}

inline void check_unpack_bits_input(const Tensor& codes, int64_t nbits) {
  STD_TORCH_CHECK(codes.scalar_type() == ScalarType::Byte, "unpack_bits: expected codes of dtype uint8, got ",
                  codes.scalar_type());
  STD_TORCH_CHECK(codes.dim() >= 1, "unpack_bits: expected codes with at least 1 dimension [..., B], got a ",
                  codes.dim(), "-d tensor");
  STD_TORCH_CHECK(nbits >= 1, "unpack_bits: expected nbits >= 1, got ", nbits);
  STD_TORCH_CHECK(packed_width(nbits) == last_dim(codes), "unpack_bits: ", nbits, " bits need ",
                  packed_width(nbits), " bytes per code, but codes have ", last_dim(codes));
}

}  // namespace cibhash
