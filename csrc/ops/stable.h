// The LibTorch stable-ABI vocabulary every op file uses: torch::stable::Tensor, the header-only
// dtypes, and the few helpers the wrappers share (allocation on an input's device, shapes and
// devices in messages). Nothing here or in any other csrc/ file may include ATen or c10: the
// built library calls libtorch only through its stable C shim, so one build loads in every torch
// from TORCH_TARGET_VERSION (setup.py) on.
//
// How an op is written (ops/cpu/pack_bits.cpp is the shortest complete example):
//   1. the schema goes in csrc/cibhash_ext.cpp (STABLE_TORCH_LIBRARY);
//   2. input checks, shared by the CPU and CUDA wrappers, go in ops/<op>.h, with STD_TORCH_CHECK
//      and a message that names the op, what was expected and what was given (the stable ABI
//      can only throw RuntimeError; cibhash_ext/ops.py runs the same checks first, in Python,
//      so that users get TypeError / ValueError);
//   3. the wrapper takes and returns `Tensor` (const Tensor& in, by value out) and plain
//      int64_t / bool / double scalars, follows STYLE.md's order (check, return early on empty,
//      contiguous, guard, allocate, launch) and is registered with
//      STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU or CUDA, m) { m.impl("op", TORCH_BOX(&op_cpu)); };
//   4. the hot loop takes raw pointers and sizes only, so it can live in a file without torch
//      headers (CUDA kernels in ops/cuda/*_kernel.cu do).
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace cibhash {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// An uninitialised contiguous tensor of `sizes` and `dtype` on the device of `like`.
inline Tensor empty_like_device(const std::vector<int64_t>& sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(sizes, dtype, std::nullopt, like.device());
}

// The same, filled with zeros.
inline Tensor zeros_like_device(const std::vector<int64_t>& sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::new_zeros(like, sizes, dtype);
}

// `t` itself when contiguous, else a contiguous copy. torch::stable::contiguous is a boxed dispatcher
// call even for a contiguous tensor, about a microsecond: a small search pays it per input.
inline Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// The sizes of `t` with the last one replaced.
inline std::vector<int64_t> with_last_dim(const Tensor& t, int64_t last) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes.back() = last;
  return sizes;
}

inline int64_t last_dim(const Tensor& t) { return t.size(t.dim() - 1); }

// "[3, 4]", as torch prints a size in an error message.
inline std::string shape_string(const Tensor& t) {
  std::ostringstream out;
  out << '[';
  const auto sizes = t.sizes();
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << ']';
  return out.str();
}

// "cpu", "cuda:0", "meta": the device types these ops meet, as torch prints them.
inline std::string device_string(const Tensor& t) {
  const auto device = t.device();
  std::ostringstream out;
  switch (device.type()) {
    case torch::headeronly::DeviceType::CPU: out << "cpu"; break;
    case torch::headeronly::DeviceType::CUDA: out << "cuda"; break;
    case torch::headeronly::DeviceType::Meta: out << "meta"; break;
    default: out << "device type " << static_cast<int>(device.type()); break;
  }
  if (device.index() >= 0 && device.type() != torch::headeronly::DeviceType::CPU) out << ':' << device.index();
  return out.str();
}

}  // namespace cibhash
