// Launchers of the CUDA kernels in ops/cuda/*_kernel.cu, declared with plain types so the torch
// wrappers (ops/cuda/*.cpp) and the kernels (compiled by nvcc without torch headers) can meet.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace cibhash {
namespace gpu {

// Element types pack_bits accepts; the wrapper maps at::ScalarType onto them.
enum class ElementType {
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt16,
  kUInt32,
  kUInt64,
  kHalf,
  kBFloat16,
  kFloat,
  kDouble,
};

// Logit types of the stochastic binary layer.
enum class FloatType { kFloat, kHalf, kBFloat16 };

// Every launcher enqueues its kernels on `stream` and returns the first launch error (cudaSuccess
// when all launched). Pointers are device pointers to contiguous data; counts are >= 1.

// x [rows, nbits] -> out [rows, ceil(nbits / 8)].
cudaError_t launch_pack_bits(const void* x, ElementType type, uint8_t* out, int64_t rows, int64_t nbits,
                             cudaStream_t stream);
// codes [rows, ceil(nbits / 8)] -> out [rows, nbits] in {0, 1}.
cudaError_t launch_unpack_bits(const uint8_t* codes, uint8_t* out, int64_t rows, int64_t nbits,
                               cudaStream_t stream);

// logits [n] -> codes [n] in {0, 1}, same type.
cudaError_t launch_stochastic_binarize_forward(const void* logits, void* codes, FloatType type, int64_t n,
                                               bool stochastic, uint64_t seed, uint64_t offset,
                                               cudaStream_t stream);
// grad_codes [n], logits [n] -> grad_logits [n], same type.
cudaError_t launch_stochastic_binarize_backward(const void* grad_codes, const void* logits, void* grad_logits,
                                                FloatType type, int64_t n, cudaStream_t stream);

// Hamming search on codes of `bytes` bytes: queries [Q, bytes], database [N, bytes].
// hamming_topk and hamming_radius need N < 2^31 (their histograms count in int32) and codes of at
// most kMaxSelectCodeBytes (4 Mbit): one histogram bin per distance 0 .. 8B, held in int offsets,
// and one block's histograms must fit in the kernels' 256 MiB workspace cap.
constexpr int64_t kMaxSelectCodeBytes = int64_t{1} << 19;

// out [Q, N] int32.
cudaError_t launch_hamming_distance(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                    int64_t bytes, int32_t* out, cudaStream_t stream);

// Bytes of global workspace the launchers below need (0 when their per-query distance histograms
// fit in shared memory). Ask on the device and with the arguments the launcher will get.
int64_t hamming_topk_workspace_bytes(int64_t Q, int64_t bytes);
int64_t hamming_radius_workspace_bytes(int64_t Q, int64_t bytes, int64_t radius);

// The k nearest codes per query ordered by (distance, index): dist [Q, k], idx [Q, k].
cudaError_t launch_hamming_topk(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                int64_t bytes, int64_t k, int32_t* dist, int64_t* idx, void* workspace,
                                cudaStream_t stream);

// counts [Q] (zero on entry) += the number of codes within `radius` of each query.
cudaError_t launch_hamming_radius_count(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                        int64_t bytes, int64_t radius, int64_t* counts, cudaStream_t stream);
// Writes query q's codes within `radius` to dist/idx [lims[q], lims[q + 1]) ordered by
// (distance, index); lims [Q + 1] is the exclusive scan of the counts above.
cudaError_t launch_hamming_radius_fill(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                       int64_t bytes, int64_t radius, const int64_t* lims, int32_t* dist,
                                       int64_t* idx, void* workspace, cudaStream_t stream);

}  // namespace gpu
}  // namespace cibhash
