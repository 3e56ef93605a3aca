// CUDA kernels of the stochastic binary layer: forward (Philox uniforms drawn in the kernel) and the
// straight-through backward grad * p * (1 - p). Math shared bit for bit with ops/cpu/ through
// ops/binarize_math.h; the torch wrapper is ops/cuda/stochastic_binarize.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "ops/binarize_math.h"
#include "ops/cuda/grid.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/launchers.h"

namespace cibhash {
namespace gpu {
namespace {

constexpr int kThreads = kElementwiseThreads;

// Conversions are exact to float and round to nearest even from float, as c10::Half and
// c10::BFloat16 do on the CPU.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// One thread per Philox block of 4 consecutive elements (grid-stride): one generator call feeds
// 4 bits, and element i always takes word i % 4 of block i / 4 whatever the launch shape, which is
// what makes the result equal to the CPU kernel's.
template <typename T, bool kStochastic>
__global__ void __launch_bounds__(kThreads)
    binarize_forward_kernel(const T* __restrict__ z, T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const int64_t first = g * 4;
    const int count = static_cast<int>(min(static_cast<int64_t>(4), n - first));
    Philox4 words{{0, 0, 0, 0}};
    if constexpr (kStochastic) words = philox_block(seed, offset, static_cast<uint64_t>(g));
    for (int l = 0; l < count; ++l) {
      const bool bit = binarize_bit(to_float(z[first + l]), kStochastic, word_to_uniform(words.v[l]));
      out[first + l] = from_float<T>(bit ? 1.0f : 0.0f);
    }
  }
}

// Elementwise, one thread per element (grid-stride).
template <typename T>
__global__ void __launch_bounds__(kThreads) binarize_backward_kernel(const T* __restrict__ grad, const T* __restrict__ z,
                                                                     T* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    out[i] = from_float<T>(binarize_grad(to_float(grad[i]), to_float(z[i])));
  }
}

template <typename T>
cudaError_t launch_forward(const void* logits, void* codes, int64_t n, bool stochastic, uint64_t seed,
                           uint64_t offset, cudaStream_t stream) {
  const int blocks = elementwise_blocks((n + 3) / 4);
  const T* z = static_cast<const T*>(logits);
  T* out = static_cast<T*>(codes);
  if (stochastic) {
    CIBHASH_LAUNCH(blocks, kThreads, 0, stream, binarize_forward_kernel<T, true>)(z, out, n, seed, offset);
  } else {
    CIBHASH_LAUNCH(blocks, kThreads, 0, stream, binarize_forward_kernel<T, false>)(z, out, n, seed, offset);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const void* grad, const void* logits, void* grad_logits, int64_t n, cudaStream_t stream) {
  CIBHASH_LAUNCH(elementwise_blocks(n), kThreads, 0, stream, binarize_backward_kernel<T>)(
      static_cast<const T*>(grad), static_cast<const T*>(logits), static_cast<T*>(grad_logits), n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_stochastic_binarize_forward(const void* logits, void* codes, FloatType type, int64_t n,
                                               bool stochastic, uint64_t seed, uint64_t offset,
                                               cudaStream_t stream) {
  switch (type) {
    case FloatType::kFloat: return launch_forward<float>(logits, codes, n, stochastic, seed, offset, stream);
    case FloatType::kHalf: return launch_forward<__half>(logits, codes, n, stochastic, seed, offset, stream);
    case FloatType::kBFloat16:
      return launch_forward<__nv_bfloat16>(logits, codes, n, stochastic, seed, offset, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_stochastic_binarize_backward(const void* grad_codes, const void* logits, void* grad_logits,
                                                FloatType type, int64_t n, cudaStream_t stream) {
  switch (type) {
    case FloatType::kFloat: return launch_backward<float>(grad_codes, logits, grad_logits, n, stream);
    case FloatType::kHalf: return launch_backward<__half>(grad_codes, logits, grad_logits, n, stream);
    case FloatType::kBFloat16: return launch_backward<__nv_bfloat16>(grad_codes, logits, grad_logits, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace gpu
}  // namespace cibhash
