// The CUDA half of ops/stable.h for the wrappers in ops/cuda/*.cpp: the device guard, torch's
// current stream on a tensor's device, and STD_CUDA_CHECK for the launchers' cudaError_t. All of
// it goes through the stable C shim (built with -DUSE_CUDA, setup.py).
#pragma once
#include <cuda_runtime_api.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>

#include "ops/stable.h"

namespace cibhash {

// Makes the tensor's device current for the wrapper's scope, as c10::cuda::CUDAGuard does.
using CudaGuard = torch::stable::accelerator::DeviceGuard;

// The stream torch's own CUDA ops on the device of `t` run on now.
inline cudaStream_t current_cuda_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace cibhash
