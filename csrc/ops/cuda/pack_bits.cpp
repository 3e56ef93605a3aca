// CUDA registration of pack_bits and unpack_bits: torch-side checks and launch; the kernels are in
// ops/cuda/pack_bits_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/cuda/launchers.h"
#include "ops/pack_bits.h"

namespace cibhash {
namespace {

gpu::ElementType element_type(at::ScalarType t) {
  switch (t) {
    case at::kBool: return gpu::ElementType::kBool;
    case at::kByte: return gpu::ElementType::kUInt8;
    case at::kChar: return gpu::ElementType::kInt8;
    case at::kShort: return gpu::ElementType::kInt16;
    case at::kInt: return gpu::ElementType::kInt32;
    case at::kLong: return gpu::ElementType::kInt64;
    case at::kUInt16: return gpu::ElementType::kUInt16;
    case at::kUInt32: return gpu::ElementType::kUInt32;
    case at::kUInt64: return gpu::ElementType::kUInt64;
    case at::kHalf: return gpu::ElementType::kHalf;
    case at::kBFloat16: return gpu::ElementType::kBFloat16;
    case at::kFloat: return gpu::ElementType::kFloat;
    case at::kDouble: return gpu::ElementType::kDouble;
    default: TORCH_CHECK_TYPE(false, "pack_bits: expected a real, integer or bool tensor, got ", t);
  }
}

at::Tensor pack_bits_cuda(const at::Tensor& x) {
  check_pack_bits_input(x);
  const gpu::ElementType type = element_type(x.scalar_type());
  const int64_t nbits = x.size(-1);
  const auto out_sizes = with_last_dim(x, packed_width(nbits));
  if (x.numel() == 0) return at::empty(out_sizes, x.options().dtype(at::kByte));
  const auto xc = x.contiguous();
  const c10::cuda::CUDAGuard guard(xc.device());
  auto out = at::empty(out_sizes, xc.options().dtype(at::kByte));
  C10_CUDA_CHECK(gpu::launch_pack_bits(xc.const_data_ptr(), type, out.mutable_data_ptr<uint8_t>(), xc.numel() / nbits,
                                       nbits, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor unpack_bits_cuda(const at::Tensor& codes, int64_t nbits) {
  check_unpack_bits_input(codes, nbits);
  const auto out_sizes = with_last_dim(codes, nbits);
  if (codes.numel() == 0) return at::empty(out_sizes, codes.options());
  const auto cc = codes.contiguous();
  const c10::cuda::CUDAGuard guard(cc.device());
  auto out = at::empty(out_sizes, cc.options());
  C10_CUDA_CHECK(gpu::launch_unpack_bits(cc.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(),
                                         cc.numel() / codes.size(-1), nbits, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
}

}  // namespace cibhash
