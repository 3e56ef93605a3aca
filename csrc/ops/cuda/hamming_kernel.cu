// CUDA kernels of hamming_distance, hamming_topk and hamming_radius. One scan code serves all three:
// a "scanner" holds a block of queries and gives the XOR + popcount distances of one database code
// to each of them; the torch wrapper is ops/cuda/hamming.cpp, the CPU twin ops/cpu/hamming.cpp.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/launch.cuh"
#include "ops/cuda/launchers.h"

namespace cibhash {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Scanners. A code of B bytes is bit-compared word by word; the word size never changes a
// distance, only how many loads and popcounts it takes.
// ---------------------------------------------------------------------------------------------

// Specialised widths (16, 32, 64, 128, 256 bits): the code is read with the widest aligned vector
// load (one 16-byte load brings a whole 128-bit code) into 32-bit registers.
template <int kBytes>
struct FixedCode {
  static constexpr int kWords = kBytes < 4 ? 1 : kBytes / 4;

  static __device__ __forceinline__ void load(const uint8_t* p, uint32_t (&w)[kWords]) {
    if constexpr (kBytes == 2) {
      w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
    } else if constexpr (kBytes == 4) {
      w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    } else if constexpr (kBytes == 8) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
      w[0] = v.x;
      w[1] = v.y;
    } else {
      static_assert(kBytes % 16 == 0, "fixed widths are 2, 4, 8 or a multiple of 16 bytes");
#pragma unroll
      for (int i = 0; i < kBytes / 16; ++i) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i + 0] = v.x;
        w[4 * i + 1] = v.y;
        w[4 * i + 2] = v.z;
        w[4 * i + 3] = v.w;
      }
    }
  }
};

// kQ queries of a specialised width, held in registers for the whole scan.
template <int kBytes, int kQ>
struct FixedScanner {
  using Code = FixedCode<kBytes>;
  uint32_t q[kQ][Code::kWords];

  // Queries first .. first + count - 1 (count >= 1); the slots past count repeat the last query so
  // no load leaves the query matrix, and their distances are ignored by the caller.
  __device__ FixedScanner(const uint8_t* queries, int64_t first, int count, int64_t /*bytes*/) {
#pragma unroll
    for (int i = 0; i < kQ; ++i) Code::load(queries + (first + min(i, count - 1)) * kBytes, q[i]);
  }

  __device__ __forceinline__ void distances(const uint8_t* database, int64_t row, int (&d)[kQ]) const {
    uint32_t r[Code::kWords];
    Code::load(database + row * kBytes, r);
#pragma unroll
    for (int i = 0; i < kQ; ++i) {
      int s = 0;
#pragma unroll
      for (int w = 0; w < Code::kWords; ++w) s += __popc(r[w] ^ q[i][w]);
      d[i] = s;
    }
  }
};

template <typename Word>
__device__ __forceinline__ int popcount(Word x) {
  if constexpr (sizeof(Word) == 8) {
    return __popcll(x);
  } else {
    return __popc(static_cast<uint32_t>(x));
  }
}

// Any other width, walked in Words (8, 4 or 1 byte, the largest that divides B). Queries are read
// from global memory: every lane of a warp reads the same word, a single broadcast load that stays
// in L1 across the database codes. Each database word is loaded once for all kQ queries.
template <typename Word, int kQ>
struct GenericScanner {
  const Word* q[kQ];
  int64_t bytes;

  __device__ GenericScanner(const uint8_t* queries, int64_t first, int count, int64_t code_bytes)
      : bytes(code_bytes) {
#pragma unroll
    for (int i = 0; i < kQ; ++i) q[i] = reinterpret_cast<const Word*>(queries + (first + min(i, count - 1)) * bytes);
  }

  __device__ __forceinline__ void distances(const uint8_t* database, int64_t row, int (&d)[kQ]) const {
    const Word* r = reinterpret_cast<const Word*>(database + row * bytes);
    const int64_t words = bytes / static_cast<int64_t>(sizeof(Word));
#pragma unroll
    for (int i = 0; i < kQ; ++i) d[i] = 0;
    for (int64_t w = 0; w < words; ++w) {
      const Word x = __ldg(r + w);
#pragma unroll
      for (int i = 0; i < kQ; ++i) d[i] += popcount<Word>(static_cast<Word>(x ^ __ldg(q[i] + w)));
    }
  }
};

template <int kBytes>
struct FixedWidth {
  template <int kQ>
  using Scanner = FixedScanner<kBytes, kQ>;
};
template <typename Word>
struct GenericWidth {
  template <int kQ>
  using Scanner = GenericScanner<Word, kQ>;
};

// The single switch that turns the runtime code width into a template argument. Each path loads
// words of one size and needs rows aligned to that size only (the width is a multiple of it, so
// the first row's alignment holds for every row): a view such as codes[1:] of 8-byte codes is
// 8-byte aligned and keeps the 8-byte path; a 16-byte width on an 8-byte boundary reads 8-byte words.
template <typename F>
cudaError_t with_width(int64_t bytes, const uint8_t* queries, const uint8_t* database, F&& f) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(queries) | reinterpret_cast<uintptr_t>(database);
  const auto aligned = [base](uintptr_t word) { return base % word == 0; };
  if (bytes == 2 && aligned(2)) return f(FixedWidth<2>{});
  if (bytes == 4 && aligned(4)) return f(FixedWidth<4>{});
  if (bytes == 8 && aligned(8)) return f(FixedWidth<8>{});
  if (bytes == 16 && aligned(16)) return f(FixedWidth<16>{});
  if (bytes == 32 && aligned(16)) return f(FixedWidth<32>{});
  if (bytes % 8 == 0 && aligned(8)) return f(GenericWidth<unsigned long long>{});
  if (bytes % 4 == 0 && aligned(4)) return f(GenericWidth<unsigned int>{});
  return f(GenericWidth<unsigned char>{});
}

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) return 0;
  return value;
}

// ---------------------------------------------------------------------------------------------
// hamming_distance and the radius counts: a 2-D grid of (database tile, block of kDenseQ queries).
// Each thread owns database rows (grid-stride) and computes all kDenseQ distances per row from one
// load of the row; stores for a fixed query are coalesced along the database.
// ---------------------------------------------------------------------------------------------

constexpr int kDenseQ = 8;
constexpr int kMaxTilesX = 256;  // rows per thread grow past N / (256 * 256) instead of blocks
constexpr int kMaxGridY = 65535;

dim3 dense_grid(int64_t Q, int64_t N) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(kMaxTilesX, (N + kThreads - 1) / kThreads)),
              static_cast<unsigned>(std::min<int64_t>(kMaxGridY, (Q + kDenseQ - 1) / kDenseQ)));
}

template <class Scanner>
__global__ void __launch_bounds__(kThreads)
    hamming_distance_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database, int64_t Q,
                            int64_t N, int64_t bytes, int32_t* __restrict__ out) {
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t q0 = static_cast<int64_t>(blockIdx.y) * kDenseQ; q0 < Q; q0 += static_cast<int64_t>(gridDim.y) * kDenseQ) {
    const int nq = static_cast<int>(min(static_cast<int64_t>(kDenseQ), Q - q0));
    const Scanner scan(queries, q0, nq, bytes);
    for (int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; row < N; row += row_stride) {
      int d[kDenseQ];
      scan.distances(database, row, d);
#pragma unroll
      for (int i = 0; i < kDenseQ; ++i) {
        if (i < nq) out[(q0 + i) * N + row] = d[i];
      }
    }
  }
}

// counts[q] += #{rows : distance <= radius}: per-thread counts, reduced over the warp by shuffles
// and over the block in shared memory, then one atomic per (block, query).
template <class Scanner>
__global__ void __launch_bounds__(kThreads)
    hamming_radius_count_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database, int64_t Q,
                                int64_t N, int64_t bytes, int radius, unsigned long long* __restrict__ counts) {
  __shared__ unsigned int partial[kWarps][kDenseQ];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t q0 = static_cast<int64_t>(blockIdx.y) * kDenseQ; q0 < Q; q0 += static_cast<int64_t>(gridDim.y) * kDenseQ) {
    const int nq = static_cast<int>(min(static_cast<int64_t>(kDenseQ), Q - q0));
    const Scanner scan(queries, q0, nq, bytes);
    unsigned int c[kDenseQ] = {};
    for (int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; row < N; row += row_stride) {
      int d[kDenseQ];
      scan.distances(database, row, d);
#pragma unroll
      for (int i = 0; i < kDenseQ; ++i) c[i] += d[i] <= radius ? 1u : 0u;
    }
#pragma unroll
    for (int i = 0; i < kDenseQ; ++i) {
      for (int s = 16; s > 0; s >>= 1) c[i] += __shfl_xor_sync(kFullMask, c[i], s);
      if (lane == 0) partial[warp][i] = c[i];
    }
    __syncthreads();
    if (threadIdx.x < nq) {
      unsigned long long total = 0;
      for (int w = 0; w < kWarps; ++w) total += partial[w][threadIdx.x];
      if (total > 0) atomicAdd(counts + q0 + threadIdx.x, total);
    }
    // partial is rewritten by the next block of queries.
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// hamming_topk and the radius results: exact selection by distance histograms, no sort.
//
// A thread block owns kQ queries at a time (grid-stride over query blocks); its kWarps warps split
// the database into kWarps contiguous segments, warp w taking rows [w * S, (w + 1) * S).
//  1. Each warp builds its own histogram of distances 0 .. bins-1 per query (shared-memory atomics;
//     a private histogram per warp keeps contention inside the warp and gives step 3 its offsets).
//  2. Per query, the histograms are summed and scanned: start[d] = number of codes at distance < d.
//     top-k: the threshold d* is the smallest d with start[d] + count[d] >= k, so the k nearest
//     are every code below d* and the first k - start[d*] codes at d* in index order.
//     radius: d* = the radius, every code up to it is kept.
//  3. Each warp turns its histogram into write cursors, cursor[w][d] = start[d] + codes at d in
//     segments before w, and rescans its segment 32 rows at a time in index order. The lanes with
//     the same distance find each other with __match_any_sync; a lane's slot is its bucket's cursor
//     plus the number of same-distance lanes below it, and the lowest such lane advances the
//     cursor. Slots are therefore ordered by (distance, index): a counting sort done in place.
//     Top-k slots >= k are the ties past the k-th item and are dropped.
// With bins = 8B + 1 (top-k) or radius + 1, the histograms live in shared memory when they fit and
// in a per-block slice of a global workspace otherwise (atomics on a generic pointer serve both).
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ int warp_inclusive_sum(int v, int lane) {
#pragma unroll
  for (int s = 1; s < 32; s <<= 1) {
    const int n = __shfl_up_sync(kFullMask, v, s);
    if (lane >= s) v += n;
  }
  return v;
}

template <class Scanner, int kQ, bool kTopk>
__global__ void __launch_bounds__(kThreads)
    hamming_select_kernel(const uint8_t* __restrict__ queries, const uint8_t* __restrict__ database, int64_t Q,
                          int64_t N, int64_t bytes, int bins, int64_t k, const int64_t* __restrict__ lims,
                          int32_t* __restrict__ out_dist, int64_t* __restrict__ out_idx, int* __restrict__ workspace,
                          int64_t region) {
  CIBHASH_DYNAMIC_SHARED(int, smem);
  int* const hist = workspace ? workspace + static_cast<int64_t>(blockIdx.x) * region : smem;  // [kWarps][kQ][bins]
  int* const start = hist + static_cast<int64_t>(kWarps) * kQ * bins;  // [kQ][bins]
  int* const thresh = start + kQ * bins;  // [kQ], d* per query, -1 for none
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int per_query = kQ * bins;

  const int64_t seg = (N + kWarps - 1) / kWarps;
  const int64_t seg_begin = min(N, warp * seg);
  const int64_t seg_end = min(N, seg_begin + seg);

  for (int64_t q0 = static_cast<int64_t>(blockIdx.x) * kQ; q0 < Q; q0 += static_cast<int64_t>(gridDim.x) * kQ) {
    const int nq = static_cast<int>(min(static_cast<int64_t>(kQ), Q - q0));
    const Scanner scan(queries, q0, nq, bytes);
    for (int64_t i = threadIdx.x; i < static_cast<int64_t>(kWarps) * per_query; i += kThreads) hist[i] = 0;
    __syncthreads();

    // 1. Per-warp histograms.
    int* const my_hist = hist + static_cast<int64_t>(warp) * per_query;
    for (int64_t base = seg_begin; base < seg_end; base += 32) {
      const int64_t row = base + lane;
      if (row < seg_end) {
        int d[kQ];
        scan.distances(database, row, d);
#pragma unroll
        for (int i = 0; i < kQ; ++i) {
          if (i < nq && d[i] < bins) atomicAdd(my_hist + i * bins + d[i], 1);
        }
      }
    }
    __syncthreads();

    // 2a. hist[w][i][d] <- codes at d in segments before w; start[i][d] <- total codes at d.
    for (int j = threadIdx.x; j < per_query; j += kThreads) {
      int run = 0;
      for (int w = 0; w < kWarps; ++w) {
        int* const h = hist + static_cast<int64_t>(w) * per_query + j;
        const int c = *h;
        *h = run;
        run += c;
      }
      start[j] = run;
    }
    __syncthreads();

    // 2b. One warp per query: exclusive scan of the totals into start[], up to the threshold.
    for (int i = warp; i < kQ; i += kWarps) {
      int* const s = start + i * bins;
      int run = 0, found = -1;
      for (int base = 0; base < bins && found < 0; base += 32) {
        const int d = base + lane;
        const int c = d < bins ? s[d] : 0;
        const int incl = warp_inclusive_sum(c, lane);
        if (d < bins) s[d] = run + incl - c;
        const bool reached = kTopk ? run + incl >= k : d == bins - 1;
        const unsigned hit = __ballot_sync(kFullMask, d < bins && reached);
        if (hit) found = base + __ffs(hit) - 1;
        run += __shfl_sync(kFullMask, incl, 31);
      }
      if (lane == 0) thresh[i] = i < nq ? found : -1;
    }
    __syncthreads();

    // 2c. Cursors for the kept buckets d <= d*.
    for (int j = threadIdx.x; j < per_query; j += kThreads) {
      if (j % bins <= thresh[j / bins]) {
        for (int w = 0; w < kWarps; ++w) hist[static_cast<int64_t>(w) * per_query + j] += start[j];
      }
    }
    __syncthreads();

    // 3. Ordered rescan; every warp only touches its own cursors, so no block barrier inside.
    int limit[kQ];
    int64_t out_base[kQ];
#pragma unroll
    for (int i = 0; i < kQ; ++i) {
      limit[i] = thresh[i];
      out_base[i] = i < nq ? (kTopk ? (q0 + i) * k : lims[q0 + i]) : 0;
    }
    for (int64_t base = seg_begin; base < seg_end; base += 32) {
      const int64_t row = base + lane;
      const bool valid = row < seg_end;
      int d[kQ];
      if (valid) {
        scan.distances(database, row, d);
      } else {
#pragma unroll
        for (int i = 0; i < kQ; ++i) d[i] = INT_MAX;
      }
#pragma unroll
      for (int i = 0; i < kQ; ++i) {
        const bool keep = d[i] <= limit[i];
        const unsigned mask = __ballot_sync(kFullMask, keep);
        if (keep) {
          const unsigned peers = __match_any_sync(mask, d[i]);
          const int rank = __popc(peers & lanes_below);
          int* const cursor = my_hist + i * bins + d[i];
          const int64_t slot = static_cast<int64_t>(*cursor) + rank;
          // Every peer has read the cursor before the lowest one moves it.
          __syncwarp(mask);
          if (rank == 0) *cursor += __popc(peers);
          if (!kTopk || slot < k) {
            out_dist[out_base[i] + slot] = d[i];
            out_idx[out_base[i] + slot] = row;
          }
        }
        // The move is seen by whichever lane reads that cursor in a later chunk, kept now or not:
        // ballots and matches do not order memory, so every lane syncs here, not only this
        // round's kept ones (a masked sync let two rows of different chunks share a slot).
        __syncwarp();
      }
    }
    // The next block of queries zeroes hist.
    __syncthreads();
  }
}

constexpr int kSelectMaxBlocks = 1 << 30;
// A global-memory workspace is bounded by capping the blocks that each hold a histogram slice.
constexpr int64_t kMaxWorkspaceBytes = int64_t{1} << 28;

constexpr int64_t select_region(int kq, int64_t bins) { return static_cast<int64_t>(kWarps + 1) * kq * bins + kq; }

// What the width limit buys: the kernel's int counters and offsets (per_query, j, base, bins)
// cannot overflow, and one block's histograms fit in the workspace cap, which is therefore real.
constexpr int64_t kMaxSelectBins = 8 * kMaxSelectCodeBytes + 1;
static_assert(select_region(4, kMaxSelectBins) <= INT_MAX, "selection histogram offsets must fit in int");
static_assert(select_region(1, kMaxSelectBins) * 4 <= kMaxWorkspaceBytes, "one block must fit in the workspace");

struct SelectPlan {
  int kq;            // queries per block, 1 or 4
  bool shared;       // histograms in shared memory (else in the workspace)
  int blocks;
  int64_t region;    // ints of histogram state per block
  int64_t workspace_bytes;
};

// Blocks of 4 queries share every database load, which pays once there are enough blocks to keep
// every SM busy; with fewer queries, one query per block gives 4x the blocks.
SelectPlan plan_select(int64_t Q, int bins) {
  const int sms = std::max(1, device_attribute(cudaDevAttrMultiProcessorCount));
  const int64_t smem_limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  SelectPlan p{};
  p.kq = (Q >= int64_t{16} * sms && select_region(4, bins) * 4 <= smem_limit) ? 4 : 1;
  p.region = select_region(p.kq, bins);
  p.shared = p.region * 4 <= smem_limit;
  const int64_t groups = (Q + p.kq - 1) / p.kq;
  if (p.shared) {
    p.blocks = static_cast<int>(std::min<int64_t>(groups, kSelectMaxBlocks));
    p.workspace_bytes = 0;
  } else {
    const int64_t by_memory = kMaxWorkspaceBytes / (p.region * 4);  // >= 1 (static_assert above)
    p.blocks = static_cast<int>(std::min({groups, int64_t{4} * sms, by_memory}));
    p.workspace_bytes = p.blocks * p.region * 4;
  }
  return p;
}

template <class Scanner, int kQ, bool kTopk>
cudaError_t launch_select_kernel(const SelectPlan& p, const uint8_t* queries, const uint8_t* database, int64_t Q,
                                 int64_t N, int64_t bytes, int bins, int64_t k, const int64_t* lims, int32_t* dist,
                                 int64_t* idx, void* workspace, cudaStream_t stream) {
  auto kernel = hamming_select_kernel<Scanner, kQ, kTopk>;
  const size_t smem = p.shared ? static_cast<size_t>(p.region) * 4 : 0;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  int* ws = p.shared ? nullptr : static_cast<int*>(workspace);
  CIBHASH_LAUNCH(p.blocks, kThreads, smem, stream, kernel)(queries, database, Q, N, bytes, bins, k, lims, dist, idx, ws, p.region);
  return cudaGetLastError();
}

template <bool kTopk>
cudaError_t launch_select(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N, int64_t bytes,
                          int64_t bins64, int64_t k, const int64_t* lims, int32_t* dist, int64_t* idx,
                          void* workspace, cudaStream_t stream) {
  // Histogram counts, cursors and bin indices are int32.
  if (N > INT_MAX || bytes > kMaxSelectCodeBytes) return cudaErrorInvalidValue;
  const int bins = static_cast<int>(bins64);
  const SelectPlan p = plan_select(Q, bins);
  if (p.workspace_bytes > 0 && workspace == nullptr) return cudaErrorInvalidValue;
  return with_width(bytes, queries, database, [&](auto width) {
    using Width = decltype(width);
    if (p.kq == 4) {
      return launch_select_kernel<typename Width::template Scanner<4>, 4, kTopk>(p, queries, database, Q, N, bytes,
                                                                                 bins, k, lims, dist, idx, workspace,
                                                                                 stream);
    }
    return launch_select_kernel<typename Width::template Scanner<1>, 1, kTopk>(p, queries, database, Q, N, bytes, bins,
                                                                               k, lims, dist, idx, workspace, stream);
  });
}

int64_t topk_bins(int64_t bytes) { return 8 * bytes + 1; }
int64_t radius_bins(int64_t bytes, int64_t radius) { return std::min(radius, 8 * bytes) + 1; }

// Codes too wide are refused by launch_select and need no workspace.
int64_t select_workspace_bytes(int64_t Q, int64_t bytes, int64_t bins) {
  return bytes > kMaxSelectCodeBytes ? 0 : plan_select(Q, static_cast<int>(bins)).workspace_bytes;
}

}  // namespace

cudaError_t launch_hamming_distance(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                    int64_t bytes, int32_t* out, cudaStream_t stream) {
  return with_width(bytes, queries, database, [&](auto width) {
    using Scanner = typename decltype(width)::template Scanner<kDenseQ>;
    CIBHASH_LAUNCH(dense_grid(Q, N), kThreads, 0, stream, hamming_distance_kernel<Scanner>)(queries, database, Q, N, bytes, out);
    return cudaGetLastError();
  });
}

int64_t hamming_topk_workspace_bytes(int64_t Q, int64_t bytes) {
  return select_workspace_bytes(Q, bytes, topk_bins(bytes));
}

int64_t hamming_radius_workspace_bytes(int64_t Q, int64_t bytes, int64_t radius) {
  return select_workspace_bytes(Q, bytes, radius_bins(bytes, radius));
}

cudaError_t launch_hamming_topk(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                int64_t bytes, int64_t k, int32_t* dist, int64_t* idx, void* workspace,
                                cudaStream_t stream) {
  if (k < 1 || k > N) return cudaErrorInvalidValue;
  return launch_select<true>(queries, database, Q, N, bytes, topk_bins(bytes), k, nullptr, dist, idx, workspace,
                             stream);
}

cudaError_t launch_hamming_radius_count(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                        int64_t bytes, int64_t radius, int64_t* counts, cudaStream_t stream) {
  const int r = static_cast<int>(std::min(radius, 8 * bytes));
  auto* out = reinterpret_cast<unsigned long long*>(counts);
  return with_width(bytes, queries, database, [&](auto width) {
    using Scanner = typename decltype(width)::template Scanner<kDenseQ>;
    CIBHASH_LAUNCH(dense_grid(Q, N), kThreads, 0, stream, hamming_radius_count_kernel<Scanner>)(queries, database, Q, N, bytes, r,
                                                                                     out);
    return cudaGetLastError();
  });
}

cudaError_t launch_hamming_radius_fill(const uint8_t* queries, const uint8_t* database, int64_t Q, int64_t N,
                                       int64_t bytes, int64_t radius, const int64_t* lims, int32_t* dist,
                                       int64_t* idx, void* workspace, cudaStream_t stream) {
  return launch_select<false>(queries, database, Q, N, bytes, radius_bins(bytes, radius), 0, lims, dist, idx,
                              workspace, stream);
}

}  // namespace gpu
}  // namespace cibhash
