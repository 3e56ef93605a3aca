// CUDA kernels of pack_bits (x > 0 -> LSB-first bytes) and unpack_bits (bytes -> {0, 1}); the torch
// wrapper is ops/cuda/pack_bits.cpp, the CPU twin ops/cpu/pack_bits.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/grid.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/launchers.h"

namespace cibhash {
namespace gpu {
namespace {

constexpr int kThreads = kElementwiseThreads;

// x > 0 in the element's own type, as the CPU kernel compares; NaN is not > 0.
template <typename T>
__device__ __forceinline__ bool is_positive(T v) {
  return v > T(0);
}
template <>
__device__ __forceinline__ bool is_positive<__half>(__half v) {
  return __half2float(v) > 0.0f;
}
template <>
__device__ __forceinline__ bool is_positive<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v) > 0.0f;
}

// One thread per output byte: it reads the (up to) 8 consecutive inputs of that byte, so a warp
// reads one contiguous stretch of 256 inputs and writes 32 contiguous bytes. Rows need no
// alignment: the byte's inputs are found from its flat index.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pack_bits_kernel(const T* __restrict__ x, uint8_t* __restrict__ out, int64_t rows, int64_t nbits, int64_t width) {
  const int64_t total = rows * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / width;
    const int64_t first = (i - r * width) * 8;
    const T* src = x + r * nbits + first;
    const int count = static_cast<int>(min(static_cast<int64_t>(8), nbits - first));
    uint32_t v = 0;
    for (int b = 0; b < count; ++b) v |= static_cast<uint32_t>(is_positive(src[b])) << b;
    out[i] = static_cast<uint8_t>(v);
  }
}

// One thread per input byte, writing its (up to) 8 outputs: a warp writes 256 contiguous bytes.
__global__ void __launch_bounds__(kThreads)
    unpack_bits_kernel(const uint8_t* __restrict__ codes, uint8_t* __restrict__ out, int64_t rows, int64_t nbits,
                       int64_t width) {
  const int64_t total = rows * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / width;
    const int64_t first = (i - r * width) * 8;
    const uint32_t v = codes[i];
    uint8_t* dst = out + r * nbits + first;
    const int count = static_cast<int>(min(static_cast<int64_t>(8), nbits - first));
    for (int b = 0; b < count; ++b) dst[b] = static_cast<uint8_t>((v >> b) & 1u);
  }
}

template <typename T>
cudaError_t launch_pack(const void* x, uint8_t* out, int64_t rows, int64_t nbits, cudaStream_t stream) {
  const int64_t width = (nbits + 7) / 8;
  CIBHASH_LAUNCH(elementwise_blocks(rows * width), kThreads, 0, stream, pack_bits_kernel<T>)(static_cast<const T*>(x), out, rows, nbits,
                                                                          width);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pack_bits(const void* x, ElementType type, uint8_t* out, int64_t rows, int64_t nbits,
                             cudaStream_t stream) {
  switch (type) {
    // torch stores bool as one byte holding 0 or 1, so "> 0" on the byte is "> false".
    case ElementType::kBool: return launch_pack<uint8_t>(x, out, rows, nbits, stream);
    case ElementType::kUInt8: return launch_pack<uint8_t>(x, out, rows, nbits, stream);
    case ElementType::kInt8: return launch_pack<int8_t>(x, out, rows, nbits, stream);
    case ElementType::kInt16: return launch_pack<int16_t>(x, out, rows, nbits, stream);
    case ElementType::kInt32: return launch_pack<int32_t>(x, out, rows, nbits, stream);
    case ElementType::kInt64: return launch_pack<int64_t>(x, out, rows, nbits, stream);
    case ElementType::kUInt16: return launch_pack<uint16_t>(x, out, rows, nbits, stream);
    case ElementType::kUInt32: return launch_pack<uint32_t>(x, out, rows, nbits, stream);
    case ElementType::kUInt64: return launch_pack<uint64_t>(x, out, rows, nbits, stream);
    case ElementType::kHalf: return launch_pack<__half>(x, out, rows, nbits, stream);
    case ElementType::kBFloat16: return launch_pack<__nv_bfloat16>(x, out, rows, nbits, stream);
    case ElementType::kFloat: return launch_pack<float>(x, out, rows, nbits, stream);
    case ElementType::kDouble: return launch_pack<double>(x, out, rows, nbits, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_unpack_bits(const uint8_t* codes, uint8_t* out, int64_t rows, int64_t nbits,
                               cudaStream_t stream) {
  const int64_t width = (nbits + 7) / 8;
  CIBHASH_LAUNCH(elementwise_blocks(rows * width), kThreads, 0, stream, unpack_bits_kernel)(codes, out, rows, nbits, width);
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace cibhash
