// Input checks shared by the CPU and CUDA Hamming search ops (hamming_distance, hamming_topk,
// hamming_radius, and the _filtered forms on the CPU). Codes are uint8 rows [*, B], bit j of a code
// is bit (j % 8) of byte j / 8.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace cibhash {

inline void check_codes(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte, op, ": expected ", name, " of dtype uint8 (packed codes), got ",
              t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": expected ", name, " of shape [rows, bytes_per_code], got a ", t.dim(),
              "-d tensor of shape ", t.sizes());
}

inline void check_query_database(const at::Tensor& queries, const at::Tensor& database, const char* op) {
  check_codes(queries, op, "queries");
  check_codes(database, op, "database");
  TORCH_CHECK_VALUE(queries.size(1) == database.size(1), op, ": expected queries and database with the same code width, got ",
              queries.size(1), " bytes and ", database.size(1), " bytes");
  TORCH_CHECK_VALUE(queries.size(1) >= 1, op, ": expected codes of at least 1 byte, got 0");
  TORCH_CHECK_VALUE(queries.device() == database.device(), op, ": expected queries and database on the same device, got ",
              queries.device(), " and ", database.device());
}

inline void check_topk_k(int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 1, "hamming_topk: expected k >= 1, got ", k);
  TORCH_CHECK_VALUE(n == 0 || k <= n, "hamming_topk: expected k <= database size ", n, ", got k=", k);
}

// The allow bitmap of a filtered search over n codes: uint8 [>= ceil(n / 8)], bit i of byte i / 8
// set when code i may be returned, on the CPU. Returns how many of the n codes are allowed.
inline int64_t check_allow(const at::Tensor& allow, int64_t n, const char* op) {
  TORCH_CHECK_TYPE(allow.scalar_type() == at::kByte, op, ": expected allow of dtype uint8 (a bitmap), got ",
                   allow.scalar_type());
  TORCH_CHECK_VALUE(allow.dim() == 1 && allow.size(0) >= (n + 7) / 8, op, ": expected allow of shape [>= ",
                    (n + 7) / 8, "] (one bit per database code), got shape ", allow.sizes());
  TORCH_CHECK_VALUE(allow.device().is_cpu(), op, ": expected allow on the CPU, got ", allow.device());
  const at::Tensor bytes = allow.slice(0, 0, (n + 7) / 8).contiguous();
  const uint8_t* p = bytes.const_data_ptr<uint8_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < n / 8; ++i) count += __builtin_popcount(p[i]);
  if (n % 8) count += __builtin_popcount(p[n / 8] & ((1u << (n % 8)) - 1));
  return count;
}

inline void check_radius(int64_t radius) {
  TORCH_CHECK_VALUE(radius >= 0, "hamming_radius: expected radius >= 0, got ", radius);
}

}  // namespace cibhash
