// Input checks shared by the CPU and CUDA Hamming search ops (hamming_distance, hamming_topk,
// hamming_radius, and the _filtered forms on the CPU). Codes are uint8 rows [*, B], bit j of a code
// is bit (j % 8) of byte j / 8.
#pragma once
#include "ops/stable.h"

namespace cibhash {

inline void check_codes(const Tensor& t, const char* op, const char* name) {
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Byte, op, ": expected ", name,
                  " of dtype uint8 (packed codes), got ", t.scalar_type());
  STD_TORCH_CHECK(t.dim() == 2, op, ": expected ", name, " of shape [rows, bytes_per_code], got a ", t.dim(),
                  "-d tensor of shape ", shape_string(t));
}

inline void check_query_database(const Tensor& queries, const Tensor& database, const char* op) {
  check_codes(queries, op, "queries");
  check_codes(database, op, "database");
  STD_TORCH_CHECK(queries.size(1) == database.size(1), op,
                  ": expected queries and database with the same code width, got ", queries.size(1), " bytes and ",
                  database.size(1), " bytes");
  STD_TORCH_CHECK(queries.size(1) >= 1, op, ": expected codes of at least 1 byte, got 0");
  STD_TORCH_CHECK(queries.device() == database.device(), op,
                  ": expected queries and database on the same device, got ", device_string(queries), " and ",
                  device_string(database));
}

inline void check_topk_k(int64_t k, int64_t n) {
  STD_TORCH_CHECK(k >= 1, "hamming_topk: expected k >= 1, got ", k);
  STD_TORCH_CHECK(n == 0 || k <= n, "hamming_topk: expected k <= database size ", n, ", got k=", k);
}

// The allow bitmap of a filtered search over n codes: uint8 [>= ceil(n / 8)], bit i of byte i / 8
// set when code i may be returned, on the CPU. Returns how many of the n codes are allowed.
inline int64_t check_allow(const Tensor& allow, int64_t n, const char* op) {
  STD_TORCH_CHECK(allow.scalar_type() == ScalarType::Byte, op, ": expected allow of dtype uint8 (a bitmap), got ",
                  allow.scalar_type());
  STD_TORCH_CHECK(allow.dim() == 1 && allow.size(0) >= (n + 7) / 8, op, ": expected allow of shape [>= ",
                  (n + 7) / 8, "] (one bit per database code), got shape ", shape_string(allow));
  STD_TORCH_CHECK(allow.is_cpu(), op, ": expected allow on the CPU, got ", device_string(allow));
  const Tensor bytes = as_contiguous(allow);
  const uint8_t* p = bytes.const_data_ptr<uint8_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < n / 8; ++i) count += __builtin_popcount(p[i]);
  if (n % 8) count += __builtin_popcount(p[n / 8] & ((1u << (n % 8)) - 1));
  return count;
}

inline void check_radius(int64_t radius) {
  STD_TORCH_CHECK(radius >= 0, "hamming_radius: expected radius >= 0, got ", radius);
}

}  // namespace cibhash
