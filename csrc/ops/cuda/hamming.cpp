// CUDA registration of hamming_distance, hamming_topk and hamming_radius: torch-side checks, output
// and workspace allocation, launch; the kernels are in ops/cuda/hamming_kernel.cu.
#include <array>
#include <climits>
#include <tuple>

#include "ops/cuda/launchers.h"
#include "ops/cuda/stable_cuda.h"
#include "ops/hamming.h"

namespace cibhash {
namespace {

// The selection kernels' limits (ops/cuda/launchers.h): int32 histograms with one bin per
// distance 0 .. 8B. Bad sizes are bad arguments (cibhash_ext/ops.py raises them as ValueError).
void check_select_sizes(const Tensor& database, const char* op) {
  STD_TORCH_CHECK(database.size(0) <= INT_MAX, op, " on CUDA: expected at most ", INT_MAX, " database codes, got ",
                  database.size(0));
  STD_TORCH_CHECK(database.size(1) <= gpu::kMaxSelectCodeBytes, op, " on CUDA: expected codes of at most ",
                  gpu::kMaxSelectCodeBytes, " bytes, got ", database.size(1));
}

// Scratch for the selection kernels' histograms when they do not fit in shared memory.
Tensor workspace(int64_t bytes, const Tensor& like) { return empty_like_device({bytes}, ScalarType::Byte, like); }

void* workspace_ptr(const Tensor& ws) { return ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr; }

// out[i] = self[0] + ... + self[i] (int64, on the current stream). The stable ABI wraps no cumsum,
// so ATen's cumsum.out is called through the stable dispatcher call.
void cumsum_out(const Tensor& self, const Tensor& out) {
  namespace detail = torch::stable::detail;
  std::array<StableIValue, 4> stack{detail::from(self), detail::from(int64_t{0}), detail::from(std::nullopt),
                                    detail::from(out)};
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::cumsum", "out", stack.data(), TORCH_ABI_VERSION));
  detail::to<Tensor>(stack[0]);  // the returned alias of `out`: take it, so its handle is freed
}

Tensor hamming_distance_cuda(const Tensor& queries, const Tensor& database) {
  check_query_database(queries, database, "hamming_distance");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  if (Q == 0 || N == 0) return empty_like_device({Q, N}, ScalarType::Int, queries);
  const Tensor qc = as_contiguous(queries);
  const Tensor dc = as_contiguous(database);
  const CudaGuard guard(qc.get_device_index());
  Tensor out = empty_like_device({Q, N}, ScalarType::Int, qc);
  STD_CUDA_CHECK(gpu::launch_hamming_distance(qc.const_data_ptr<uint8_t>(), dc.const_data_ptr<uint8_t>(), Q, N, B,
                                              out.mutable_data_ptr<int32_t>(), current_cuda_stream(qc)));
  return out;
}

std::tuple<Tensor, Tensor> hamming_topk_cuda(const Tensor& queries, const Tensor& database, int64_t k) {
  check_query_database(queries, database, "hamming_topk");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  check_topk_k(k, N);
  check_select_sizes(database, "hamming_topk");
  if (N == 0) k = 0;
  if (Q == 0 || k == 0) {
    return {empty_like_device({Q, k}, ScalarType::Int, queries), empty_like_device({Q, k}, ScalarType::Long, queries)};
  }
  const Tensor qc = as_contiguous(queries);
  const Tensor dc = as_contiguous(database);
  const CudaGuard guard(qc.get_device_index());
  Tensor dist = empty_like_device({Q, k}, ScalarType::Int, qc);
  Tensor idx = empty_like_device({Q, k}, ScalarType::Long, qc);
  const Tensor ws = workspace(gpu::hamming_topk_workspace_bytes(Q, B), qc);
  STD_CUDA_CHECK(gpu::launch_hamming_topk(qc.const_data_ptr<uint8_t>(), dc.const_data_ptr<uint8_t>(), Q, N, B, k,
                                          dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>(),
                                          workspace_ptr(ws), current_cuda_stream(qc)));
  return {dist, idx};
}

std::tuple<Tensor, Tensor, Tensor> hamming_radius_cuda(const Tensor& queries, const Tensor& database, int64_t radius) {
  check_query_database(queries, database, "hamming_radius");
  check_radius(radius);
  check_select_sizes(database, "hamming_radius");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  if (Q == 0 || N == 0) {
    return {zeros_like_device({Q + 1}, ScalarType::Long, queries), empty_like_device({0}, ScalarType::Int, queries),
            empty_like_device({0}, ScalarType::Long, queries)};
  }
  const Tensor qc = as_contiguous(queries);
  const Tensor dc = as_contiguous(database);
  const CudaGuard guard(qc.get_device_index());
  const cudaStream_t stream = current_cuda_stream(qc);
  const uint8_t* qp = qc.const_data_ptr<uint8_t>();
  const uint8_t* dp = dc.const_data_ptr<uint8_t>();

  // Pass 1 counts each query's matches; their running sum is lims, and its last entry (read back,
  // the one host synchronisation) sizes the outputs.
  const Tensor counts = zeros_like_device({Q}, ScalarType::Long, qc);
  STD_CUDA_CHECK(gpu::launch_hamming_radius_count(qp, dp, Q, N, B, radius, counts.mutable_data_ptr<int64_t>(), stream));
  Tensor lims = zeros_like_device({Q + 1}, ScalarType::Long, qc);
  cumsum_out(counts, torch::stable::narrow(lims, 0, 1, Q));
  int64_t total = 0;
  STD_CUDA_CHECK(cudaMemcpyAsync(&total, lims.const_data_ptr<int64_t>() + Q, sizeof(total), cudaMemcpyDeviceToHost,
                                 stream));
  STD_CUDA_CHECK(cudaStreamSynchronize(stream));
  Tensor dist = empty_like_device({total}, ScalarType::Int, qc);
  Tensor idx = empty_like_device({total}, ScalarType::Long, qc);
  if (total == 0) return {lims, dist, idx};

  // Pass 2 writes every query's matches into its slice, ordered by (distance, index).
  const Tensor ws = workspace(gpu::hamming_radius_workspace_bytes(Q, B, radius), qc);
  STD_CUDA_CHECK(gpu::launch_hamming_radius_fill(qp, dp, Q, N, B, radius, lims.const_data_ptr<int64_t>(),
                                                 dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>(),
                                                 workspace_ptr(ws), stream));
  return {lims, dist, idx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("hamming_distance", TORCH_BOX(&hamming_distance_cuda));
  m.impl("hamming_topk", TORCH_BOX(&hamming_topk_cuda));
  m.impl("hamming_radius", TORCH_BOX(&hamming_radius_cuda));
}

}  // namespace cibhash
