// Launch shape shared by the element-wise CUDA kernels (pack_bits, stochastic_binarize): 256
// threads per block and grid-stride loops, so any size is covered by a bounded grid.
#pragma once
#include <algorithm>
#include <cstdint>

namespace cibhash {
namespace gpu {

constexpr int kElementwiseThreads = 256;
// More blocks than this only add scheduling work: the grid-stride loops cover the rest.
constexpr int64_t kMaxElementwiseBlocks = 65536;

inline int elementwise_blocks(int64_t items) {
  return static_cast<int>(
      std::min<int64_t>(kMaxElementwiseBlocks, (items + kElementwiseThreads - 1) / kElementwiseThreads));
}

}  // namespace gpu
}  // namespace cibhash
