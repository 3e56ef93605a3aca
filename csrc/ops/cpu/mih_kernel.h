// Exact multi-index hashing (Norouzi, Punjani and Fleet, "Fast exact search in Hamming space with
// multi-index hashing", TPAMI 2014) as plain C++ on raw pointers, with no torch headers: the table
// build, the bucket enumeration and the candidate check. The torch wrapper is ops/cpu/mih.cpp.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace cibhash::mih {

// One substring table over n' codes (all of an index, or one segment of it): their positions, which
// index the whole codes array, sorted by (substring key, position); a directory of offsets by the
// key's top dir_bits bits; and the key's remaining low bits beside each position when the directory
// does not hold them all (low == nullptr when dir_bits == bit_count).
struct Table {
  int32_t bit_start;  // the substring is bits [bit_start, bit_start + bit_count) of a code
  int32_t bit_count;  // 1 .. 32
  int32_t dir_bits;  // 1 .. bit_count
  const int32_t* dir;  // [2^dir_bits + 1] offsets into pos
  const int32_t* low;  // [n'] key & (2^(bit_count - dir_bits) - 1), or nullptr
  const int32_t* pos;  // [n'] positions in [0, n)
};

struct Index {
  const uint8_t* codes;  // [n, code_size]
  int64_t n;
  int64_t code_size;
  const Table* tables;
  int32_t m;
};

// Substring key of a code: bits [bit_start, bit_start + bit_count) as an integer, least-significant
// bit first (bit j of a code is bit j % 8 of byte j / 8).
uint32_t substring(const uint8_t* code, int64_t code_size, int32_t bit_start, int32_t bit_count);

// Fills one table's arrays: dir [2^dir_bits + 1], pos [n] and, when dir_bits < bit_count, low [n].
// Linear time: a stable counting sort on the low bits (16 at a time), then on the directory bits.
void build_table(const uint8_t* codes, int64_t n, int64_t code_size, int32_t bit_start, int32_t bit_count,
                 int32_t dir_bits, int32_t* dir, int32_t* low, int32_t* pos);

// The k nearest codes of one query by (distance, position), searched with growing radii until the
// k-th distance is within the radius every table has covered. allow: nullptr or a bitmap (bit i of
// byte i / 8) of the positions that may be returned. budget: the most bucket probes plus candidate
// checks to spend. Returns the number of results written to dist/pos (k, or fewer when the tables
// list fewer than k allowed codes and the budget allowed enumerating them all), or
// -1 when the budget ran out first, or would run out before the rings that hold the k-th distance
// found so far are probed (the caller then scans).
int64_t knn(const Index& index, const uint8_t* query, int64_t k, const uint8_t* allow, int64_t budget, int32_t* dist,
            int64_t* pos);

// Every code within distance <= radius of one query, appended to out as (distance, position)
// ordered by (distance, position). Returns false (out unchanged) when the budget ran out first or
// would run out before the radius is covered (then nothing is probed).
bool radius_search(const Index& index, const uint8_t* query, int32_t radius, const uint8_t* allow, int64_t budget,
                   std::vector<std::pair<int32_t, int64_t>>& out);

}  // namespace cibhash::mih
