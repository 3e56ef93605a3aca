// CUDA registration of hamming_distance, hamming_topk and hamming_radius: torch-side checks, output
// and workspace allocation, launch; the kernels are in ops/cuda/hamming_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>

#include "ops/cuda/launchers.h"
#include "ops/hamming.h"

namespace cibhash {
namespace {

// The selection kernels' limits (ops/cuda/launchers.h): int32 histograms with one bin per
// distance 0 .. 8B. Bad sizes are bad arguments, so ValueError as on the CPU.
void check_select_sizes(const at::Tensor& database, const char* op) {
  TORCH_CHECK_VALUE(database.size(0) <= INT_MAX, op, " on CUDA: expected at most ", INT_MAX,
                    " database codes, got ", database.size(0));
  TORCH_CHECK_VALUE(database.size(1) <= gpu::kMaxSelectCodeBytes, op, " on CUDA: expected codes of at most ",
                    gpu::kMaxSelectCodeBytes, " bytes, got ", database.size(1));
}

// Scratch for the selection kernels' histograms when they do not fit in shared memory.
at::Tensor workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

at::Tensor hamming_distance_cuda(const at::Tensor& queries, const at::Tensor& database) {
  check_query_database(queries, database, "hamming_distance");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  if (Q == 0 || N == 0) return at::empty({Q, N}, queries.options().dtype(at::kInt));
  const auto qc = queries.contiguous();
  const auto dc = database.contiguous();
  const c10::cuda::CUDAGuard guard(qc.device());
  auto out = at::empty({Q, N}, qc.options().dtype(at::kInt));
  C10_CUDA_CHECK(gpu::launch_hamming_distance(qc.const_data_ptr<uint8_t>(), dc.const_data_ptr<uint8_t>(), Q, N, B,
                                              out.mutable_data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> hamming_topk_cuda(const at::Tensor& queries, const at::Tensor& database, int64_t k) {
  check_query_database(queries, database, "hamming_topk");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  check_topk_k(k, N);
  check_select_sizes(database, "hamming_topk");
  if (N == 0) k = 0;
  if (Q == 0 || k == 0) {
    return {at::empty({Q, k}, queries.options().dtype(at::kInt)), at::empty({Q, k}, queries.options().dtype(at::kLong))};
  }
  const auto qc = queries.contiguous();
  const auto dc = database.contiguous();
  const c10::cuda::CUDAGuard guard(qc.device());
  auto dist = at::empty({Q, k}, qc.options().dtype(at::kInt));
  auto idx = at::empty({Q, k}, qc.options().dtype(at::kLong));
  auto ws = workspace(gpu::hamming_topk_workspace_bytes(Q, B), qc);
  C10_CUDA_CHECK(gpu::launch_hamming_topk(qc.const_data_ptr<uint8_t>(), dc.const_data_ptr<uint8_t>(), Q, N, B, k,
                                          dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>(),
                                          ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr,
                                          c10::cuda::getCurrentCUDAStream()));
  return {dist, idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hamming_radius_cuda(const at::Tensor& queries,
                                                                   const at::Tensor& database, int64_t radius) {
  check_query_database(queries, database, "hamming_radius");
  check_radius(radius);
  check_select_sizes(database, "hamming_radius");
  const int64_t Q = queries.size(0), N = database.size(0), B = queries.size(1);
  if (Q == 0 || N == 0) {
    return {at::zeros({Q + 1}, queries.options().dtype(at::kLong)), at::empty({0}, queries.options().dtype(at::kInt)),
            at::empty({0}, queries.options().dtype(at::kLong))};
  }
  const auto qc = queries.contiguous();
  const auto dc = database.contiguous();
  const c10::cuda::CUDAGuard guard(qc.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* qp = qc.const_data_ptr<uint8_t>();
  const uint8_t* dp = dc.const_data_ptr<uint8_t>();

  // Pass 1 counts each query's matches; their running sum is lims, and its last entry (read back,
  // the one host synchronisation) sizes the outputs.
  auto counts = at::zeros({Q}, qc.options().dtype(at::kLong));
  C10_CUDA_CHECK(gpu::launch_hamming_radius_count(qp, dp, Q, N, B, radius, counts.mutable_data_ptr<int64_t>(), stream));
  auto lims = at::zeros({Q + 1}, qc.options().dtype(at::kLong));
  auto tail = lims.narrow(0, 1, Q);
  at::cumsum_out(tail, counts, 0);
  const int64_t total = lims[Q].item<int64_t>();
  auto dist = at::empty({total}, qc.options().dtype(at::kInt));
  auto idx = at::empty({total}, qc.options().dtype(at::kLong));
  if (total == 0) return {lims, dist, idx};

  // Pass 2 writes every query's matches into its slice, ordered by (distance, index).
  auto ws = workspace(gpu::hamming_radius_workspace_bytes(Q, B, radius), qc);
  C10_CUDA_CHECK(gpu::launch_hamming_radius_fill(qp, dp, Q, N, B, radius, lims.const_data_ptr<int64_t>(),
                                                 dist.mutable_data_ptr<int32_t>(), idx.mutable_data_ptr<int64_t>(),
                                                 ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr, stream));
  return {lims, dist, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(cibhash_ext, CUDA, m) {
  m.impl("hamming_distance", &hamming_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
  m.impl("hamming_radius", &hamming_radius_cuda);
}

}  // namespace cibhash
