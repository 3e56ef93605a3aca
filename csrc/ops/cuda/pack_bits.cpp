// CUDA registration of pack_bits and unpack_bits: torch-side checks and launch; the kernels are in
// ops/cuda/pack_bits_kernel.cu.
#include "ops/cuda/launchers.h"
#include "ops/cuda/stable_cuda.h"
#include "ops/pack_bits.h"

namespace cibhash {
namespace {

// Only called after check_pack_bits_input, so every dtype left has a case.
gpu::ElementType element_type(ScalarType t) {
  switch (t) {
    case ScalarType::Bool: return gpu::ElementType::kBool;
    case ScalarType::Byte: return gpu::ElementType::kUInt8;
    case ScalarType::Char: return gpu::ElementType::kInt8;
    case ScalarType::Short: return gpu::ElementType::kInt16;
    case ScalarType::Int: return gpu::ElementType::kInt32;
    case ScalarType::Long: return gpu::ElementType::kInt64;
    case ScalarType::UInt16: return gpu::ElementType::kUInt16;
    case ScalarType::UInt32: return gpu::ElementType::kUInt32;
    case ScalarType::UInt64: return gpu::ElementType::kUInt64;
    case ScalarType::Half: return gpu::ElementType::kHalf;
    case ScalarType::BFloat16: return gpu::ElementType::kBFloat16;
    case ScalarType::Float: return gpu::ElementType::kFloat;
    default: return gpu::ElementType::kDouble;
  }
}

Tensor pack_bits_cuda(const Tensor& x) {
  check_pack_bits_input(x);
  const gpu::ElementType type = element_type(x.scalar_type());
  const int64_t nbits = last_dim(x);
  const auto out_sizes = with_last_dim(x, packed_width(nbits));
  if (x.numel() == 0) return empty_like_device(out_sizes, ScalarType::Byte, x);
  const Tensor xc = as_contiguous(x);
  const CudaGuard guard(xc.get_device_index());
  Tensor out = empty_like_device(out_sizes, ScalarType::Byte, xc);
  STD_CUDA_CHECK(gpu::launch_pack_bits(xc.const_data_ptr(), type, out.mutable_data_ptr<uint8_t>(), xc.numel() / nbits,
                                       nbits, current_cuda_stream(xc)));
  return out;
}

Tensor unpack_bits_cuda(const Tensor& codes, int64_t nbits) {
  check_unpack_bits_input(codes, nbits);
  const auto out_sizes = with_last_dim(codes, nbits);
  if (codes.numel() == 0) return empty_like_device(out_sizes, ScalarType::Byte, codes);
  const Tensor cc = as_contiguous(codes);
  const CudaGuard guard(cc.get_device_index());
  Tensor out = empty_like_device(out_sizes, ScalarType::Byte, cc);
  STD_CUDA_CHECK(gpu::launch_unpack_bits(cc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(),
                                         cc.numel() / last_dim(codes), nbits, current_cuda_stream(cc)));
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("pack_bits", TORCH_BOX(&pack_bits_cuda));
  m.impl("unpack_bits", TORCH_BOX(&unpack_bits_cuda));
}

}  // namespace cibhash
