// CPU kernels of pack_bits (x > 0 -> LSB-first bytes) and unpack_bits (bytes -> {0,1}).
#include <torch/headeronly/core/Dispatch_v2.h>

#include <algorithm>

#include "ops/pack_bits.h"

namespace cibhash {
namespace {

// One task packs whole rows; a row of L inputs becomes ceil(L/8) bytes, padding bits 0.
template <typename T>
void pack_rows(const T* x, uint8_t* out, int64_t rows, int64_t nbits) {
  const int64_t width = packed_width(nbits);
  torch::stable::parallel_for(0, rows, std::max<int64_t>(1, 32768 / nbits), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = x + r * nbits;
      uint8_t* dst = out + r * width;
      for (int64_t byte = 0; byte < width; ++byte) {
        const int64_t first = byte * 8;
        const int64_t count = std::min<int64_t>(8, nbits - first);
        uint8_t v = 0;
        for (int64_t b = 0; b < count; ++b) {
          v |= static_cast<uint8_t>(row[first + b] > T(0)) << b;
        }
        dst[byte] = v;
      }
    }
  });
}

Tensor pack_bits_cpu(const Tensor& x) {
  check_pack_bits_input(x);
  const int64_t nbits = last_dim(x);
  Tensor out = empty_like_device(with_last_dim(x, packed_width(nbits)), ScalarType::Byte, x);
  if (out.numel() == 0) return out;
  const Tensor xc = as_contiguous(x);
  THO_DISPATCH_V2(
      xc.scalar_type(), "pack_bits_cpu",
      AT_WRAP([&] { pack_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<uint8_t>(), xc.numel() / nbits, nbits); }),
      AT_EXPAND(AT_ALL_TYPES), AT_EXPAND(AT_BAREBONES_UNSIGNED_TYPES), ScalarType::Half, ScalarType::BFloat16,
      ScalarType::Bool);
  return out;
}

Tensor unpack_bits_cpu(const Tensor& codes, int64_t nbits) {
  check_unpack_bits_input(codes, nbits);
  Tensor out = empty_like_device(with_last_dim(codes, nbits), ScalarType::Byte, codes);
  if (out.numel() == 0) return out;
  const Tensor cc = as_contiguous(codes);
  const uint8_t* src = cc.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  const int64_t width = last_dim(codes);
  torch::stable::parallel_for(0, cc.numel() / width, std::max<int64_t>(1, 32768 / nbits), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < nbits; ++j) {
        dst[r * nbits + j] = (src[r * width + (j >> 3)] >> (j & 7)) & 1;
      }
    }
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU, m) {
  m.impl("pack_bits", TORCH_BOX(&pack_bits_cpu));
  m.impl("unpack_bits", TORCH_BOX(&unpack_bits_cpu));
}

}  // namespace cibhash
