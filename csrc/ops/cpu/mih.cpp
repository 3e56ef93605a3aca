// Thin torch wrappers of the multi-index hashing kernels (mih_kernel.h): input checks, outputs, and
// the split of tables (build) or queries (search) over threads. STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU).
#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "ops/cpu/mih_kernel.h"
#include "ops/hamming.h"

namespace cibhash {
namespace {

// Queries are split over threads in tasks of at least this many: a query costs microseconds, so a
// small batch runs on the calling thread instead of waking the pool (a 16-query probe measured 20 ms
// with 2 threads on the loaded shared machine, 0.2 ms on one).
constexpr int64_t kQueriesPerTask = 32;

// layout: (bit_start, bit_count, dir_bits) per table; tables: (dir, low, pos) per table, low empty
// when dir_bits == bit_count.
std::vector<mih::Table> checked_tables(const Tensor& codes, const std::vector<int64_t>& layout,
                                       const std::vector<Tensor>& tables, const char* op) {
  STD_TORCH_CHECK(layout.size() % 3 == 0 && !layout.empty() && tables.size() == layout.size(), op,
                    ": expected 3 layout numbers and 3 tensors per table, got ", layout.size(), " and ",
                    tables.size());
  const int64_t n = codes.size(0), bits = 8 * codes.size(1);
  std::vector<mih::Table> out;
  for (size_t i = 0; i < layout.size(); i += 3) {
    const int64_t start = layout[i], count = layout[i + 1], dir_bits = layout[i + 2];
    STD_TORCH_CHECK(start >= 0 && count >= 1 && count <= 32 && start + count <= bits && dir_bits >= 1 &&
                        dir_bits <= count,
                    op, ": expected table layout 0 <= start, 1 <= dir_bits <= bit_count <= 32 within ", bits,
                    " bits, got (", start, ", ", count, ", ", dir_bits, ")");
    const Tensor &dir = tables[i], &low = tables[i + 1], &pos = tables[i + 2];
    for (const Tensor* t : {&dir, &low, &pos}) {
      STD_TORCH_CHECK(t->scalar_type() == ScalarType::Int && t->dim() == 1 && t->is_contiguous() && t->is_cpu(), op,
                    ": expected table arrays as contiguous 1-d int32 CPU tensors, got ", t->scalar_type(),
                    " of shape ", shape_string(*t));
    }
    const bool has_low = dir_bits < count;
    // A table may list a part of the codes (a segment of an index that grew); its positions index
    // the whole codes array.
    STD_TORCH_CHECK(dir.size(0) == (int64_t{1} << dir_bits) + 1 && pos.size(0) <= n &&
                        low.size(0) == (has_low ? pos.size(0) : 0),
                    op, ": table ", i / 3, " has arrays of sizes ", dir.size(0), ", ", low.size(0), ", ",
                    pos.size(0), " for at most ", n, " codes and ", dir_bits, " directory bits");
    out.push_back(mih::Table{static_cast<int32_t>(start), static_cast<int32_t>(count), static_cast<int32_t>(dir_bits),
                             dir.const_data_ptr<int32_t>(), has_low ? low.const_data_ptr<int32_t>() : nullptr,
                             pos.const_data_ptr<int32_t>()});
  }
  return out;
}

void check_codes_for_mih(const Tensor& codes, const char* op) {
  check_codes(codes, op, "codes");
  STD_TORCH_CHECK(codes.is_cpu() && codes.is_contiguous(), op, ": expected contiguous CPU codes");
  STD_TORCH_CHECK(codes.size(0) < (int64_t{1} << 31), op, ": expected fewer than 2^31 codes, got ", codes.size(0));
}

std::vector<Tensor> mih_build_cpu(const Tensor& codes, const std::vector<int64_t>& layout) {
  check_codes_for_mih(codes, "mih_build");
  const int64_t n = codes.size(0), m = static_cast<int64_t>(layout.size() / 3);
  std::vector<Tensor> tables;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t count = layout[3 * i + 1], dir_bits = layout[3 * i + 2];
    STD_TORCH_CHECK(count >= 1 && count <= 32 && dir_bits >= 1 && dir_bits <= count && dir_bits <= 30,
                    "mih_build: expected 1 <= dir_bits <= bit_count <= 32, got ", dir_bits, " and ", count);
    tables.push_back(empty_like_device({(int64_t{1} << dir_bits) + 1}, ScalarType::Int, codes));
    tables.push_back(empty_like_device({dir_bits < count ? n : 0}, ScalarType::Int, codes));
    tables.push_back(empty_like_device({n}, ScalarType::Int, codes));
  }
  checked_tables(codes, layout, tables, "mih_build");
  // One table per task: each is an independent linear pass over the codes.
  torch::stable::parallel_for(0, m, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const Tensor& low = tables[3 * i + 1];
      mih::build_table(codes.const_data_ptr<uint8_t>(), n, codes.size(1), static_cast<int32_t>(layout[3 * i]),
                       static_cast<int32_t>(layout[3 * i + 1]), static_cast<int32_t>(layout[3 * i + 2]),
                       tables[3 * i].mutable_data_ptr<int32_t>(), low.numel() ? low.mutable_data_ptr<int32_t>() : nullptr,
                       tables[3 * i + 2].mutable_data_ptr<int32_t>());
    }
  });
  return tables;
}

const uint8_t* checked_allow(const std::optional<Tensor>& allow, int64_t n, const char* op) {
  if (!allow.has_value()) return nullptr;
  check_allow(*allow, n, op);
  STD_TORCH_CHECK(allow->is_contiguous(), op, ": expected a contiguous allow bitmap");
  return allow->const_data_ptr<uint8_t>();
}

std::tuple<Tensor, Tensor, Tensor> mih_search_cpu(const Tensor& queries, const Tensor& codes,
                                                  const std::vector<int64_t>& layout, const std::vector<Tensor>& tables,
                                                  int64_t k, const std::optional<Tensor>& allow, int64_t budget) {
  check_codes_for_mih(codes, "mih_search");
  check_query_database(queries, codes, "mih_search");
  const std::vector<mih::Table> views = checked_tables(codes, layout, tables, "mih_search");
  const uint8_t* bitmap = checked_allow(allow, codes.size(0), "mih_search");
  const int64_t Q = queries.size(0), n = codes.size(0);
  STD_TORCH_CHECK(k >= 1 && k <= n, "mih_search: expected 1 <= k <= ", n, " codes, got k=", k);
  const Tensor q = as_contiguous(queries);
  Tensor dist = empty_like_device({Q, k}, ScalarType::Int, queries);
  Tensor pos = empty_like_device({Q, k}, ScalarType::Long, queries);
  Tensor done = empty_like_device({Q}, ScalarType::Bool, queries);
  const mih::Index index{codes.const_data_ptr<uint8_t>(), n, codes.size(1), views.data(),
                         static_cast<int32_t>(views.size())};
  // Raw pointers taken once: each stable-ABI accessor is a call into torch.
  const uint8_t* qp = q.const_data_ptr<uint8_t>();
  const int64_t qbytes = q.size(1);
  int32_t* dp = dist.mutable_data_ptr<int32_t>();
  int64_t* pp = pos.mutable_data_ptr<int64_t>();
  bool* donep = done.mutable_data_ptr<bool>();
  torch::stable::parallel_for(0, Q, kQueriesPerTask, [&](int64_t q0, int64_t q1) {
    for (int64_t i = q0; i < q1; ++i) {
      const int64_t found = mih::knn(index, qp + i * qbytes, k, bitmap, budget, dp + i * k, pp + i * k);
      donep[i] = found >= 0;
      // Tables over fewer than k allowed codes: the rest of the row is padding, (2^31 - 1, -1).
      for (int64_t j = std::max<int64_t>(found, 0); j < k; ++j) {
        dp[i * k + j] = std::numeric_limits<int32_t>::max();
        pp[i * k + j] = -1;
      }
    }
  });
  return {dist, pos, done};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mih_range_search_cpu(const Tensor& queries, const Tensor& codes,
                                                                const std::vector<int64_t>& layout,
                                                                const std::vector<Tensor>& tables, int64_t radius,
                                                                const std::optional<Tensor>& allow, int64_t budget) {
  check_codes_for_mih(codes, "mih_range_search");
  check_query_database(queries, codes, "mih_range_search");
  check_radius(radius);
  const std::vector<mih::Table> views = checked_tables(codes, layout, tables, "mih_range_search");
  const uint8_t* bitmap = checked_allow(allow, codes.size(0), "mih_range_search");
  const int64_t Q = queries.size(0), n = codes.size(0);
  const Tensor q = as_contiguous(queries);
  const mih::Index index{codes.const_data_ptr<uint8_t>(), n, codes.size(1), views.data(),
                         static_cast<int32_t>(views.size())};
  const int32_t r = static_cast<int32_t>(std::min<int64_t>(radius, 8 * codes.size(1)));
  std::vector<std::vector<std::pair<int32_t, int64_t>>> found(static_cast<size_t>(Q));
  Tensor done = empty_like_device({Q}, ScalarType::Bool, queries);
  const uint8_t* qp = q.const_data_ptr<uint8_t>();
  const int64_t qbytes = q.size(1);
  bool* donep = done.mutable_data_ptr<bool>();
  torch::stable::parallel_for(0, Q, kQueriesPerTask, [&](int64_t q0, int64_t q1) {
    for (int64_t i = q0; i < q1; ++i) donep[i] = mih::radius_search(index, qp + i * qbytes, r, bitmap, budget, found[i]);
  });
  Tensor lims = zeros_like_device({Q + 1}, ScalarType::Long, queries);
  int64_t* lp = lims.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < Q; ++i) lp[i + 1] = lp[i] + static_cast<int64_t>(found[i].size());
  Tensor dist = empty_like_device({lp[Q]}, ScalarType::Int, queries);
  Tensor pos = empty_like_device({lp[Q]}, ScalarType::Long, queries);
  int32_t* dp = dist.mutable_data_ptr<int32_t>();
  int64_t* pp = pos.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < Q; ++i) {
    for (size_t j = 0; j < found[i].size(); ++j) {
      dp[lp[i] + j] = found[i][j].first;
      pp[lp[i] + j] = found[i][j].second;
    }
  }
  return {lims, dist, pos, done};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU, m) {
  m.impl("mih_build", TORCH_BOX(&mih_build_cpu));
  m.impl("mih_search", TORCH_BOX(&mih_search_cpu));
  m.impl("mih_range_search", TORCH_BOX(&mih_range_search_cpu));
}

}  // namespace cibhash
