// Multi-index hashing kernels (declared in mih_kernel.h): counting-sort table build, progressive
// bucket enumeration for k-NN, radius enumeration. One query per call; the wrapper splits queries
// over threads.
#include "ops/cpu/mih_kernel.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace cibhash::mih {

uint32_t substring(const uint8_t* code, int64_t code_size, int32_t bit_start, int32_t bit_count) {
  // At most 32 bits from bit offset 0..7 of the first byte: 5 bytes, read as one little-endian word.
  const int64_t first = bit_start / 8;
  uint64_t word = 0;
  std::memcpy(&word, code + first, static_cast<size_t>(std::min<int64_t>(8, code_size - first)));
  word >>= bit_start % 8;
  return static_cast<uint32_t>(word & ((uint64_t{1} << bit_count) - 1));
}

namespace {

// One stable counting-sort pass of (key, position) pairs by bits [shift, shift + width) of the key.
// pos_in == nullptr means the positions 0 .. n-1.
void counting_pass(int64_t n, const uint32_t* key_in, const int32_t* pos_in, int32_t shift, int32_t width,
                   uint32_t* key_out, int32_t* pos_out) {
  const uint32_t mask = (uint32_t{1} << width) - 1;
  std::vector<int64_t> start((size_t{1} << width) + 1, 0);
  for (int64_t j = 0; j < n; ++j) ++start[((key_in[j] >> shift) & mask) + 1];
  for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
  for (int64_t j = 0; j < n; ++j) {
    const int64_t at = start[(key_in[j] >> shift) & mask]++;
    key_out[at] = key_in[j];
    pos_out[at] = pos_in ? pos_in[j] : static_cast<int32_t>(j);
  }
}

inline bool excluded(const uint8_t* allow, int64_t i) { return allow != nullptr && !((allow[i >> 3] >> (i & 7)) & 1); }

inline int32_t distance(const uint8_t* a, const uint8_t* b, int64_t bytes) {
  int32_t d = 0;
  int64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += __builtin_popcountll(x ^ y);
  }
  for (; i < bytes; ++i) d += __builtin_popcount(static_cast<unsigned>(a[i] ^ b[i]));
  return d;
}

// The steps of a search are (r, i): table i probed at substring distance exactly r, in the order
// r = 0, 1, ...; i = 0 .. m-1. A code is enumerated once per table, at step (d_i, i) where d_i is its
// substring distance, so it is new at step (r, i) unless some table j < i has d_j <= r or some
// table j > i has d_j < r. Checking that here, instead of keeping a visited set, costs m popcounts
// per candidate and no memory proportional to the database.
bool first_visit(const Index& index, const uint32_t* qkeys, const uint8_t* code, int32_t i, int32_t r) {
  for (int32_t j = 0; j < index.m; ++j) {
    if (j == i) continue;
    const Table& t = index.tables[j];
    const int32_t d = __builtin_popcount(substring(code, index.code_size, t.bit_start, t.bit_count) ^ qkeys[j]);
    if (d < r || (d == r && j < i)) return false;
  }
  return true;
}

// After step (r, i), every code within distance m * r + i has been enumerated: otherwise its
// substring distances would be >= r + 1 on tables 0..i and >= r on the others, summing to more
// (the pigeonhole bound of the paper, refined per table).
inline int64_t covered(const Index& index, int32_t r, int32_t i) { return int64_t{index.m} * r + i; }

// Buckets of a ring looked up together: their directory entries, positions and codes are
// prefetched a stage ahead of use, so the cache misses of up to this many buckets overlap instead of
// running one after another (a probe and a candidate each cost a miss in tables of millions of codes).
constexpr int kProbeBatch = 16;
constexpr int kPrefetchCodes = 32;  // codes prefetched per bucket (a large one is read in order anyway)

// Calls visit(position) for every code of table t whose key is at distance exactly r from qkey
// (the keys are enumerated as qkey ^ mask over the masks with r bits set, in Gosper's order), the
// codes of a bucket in position order. Each probe and each visited code costs one unit of budget,
// charged before the bucket is visited; returns false when it runs out.
template <typename Visit>
bool probe_ring(const Table& t, const Index& index, uint32_t qkey, int32_t r, int64_t& budget, Visit&& visit) {
  if (r > t.bit_count) return true;
  const int32_t low_bits = t.bit_count - t.dir_bits;
  const uint32_t low_mask = (uint32_t{1} << low_bits) - 1;
  const uint64_t end = uint64_t{1} << t.bit_count;
  uint64_t mask = (uint64_t{1} << r) - 1;
  uint32_t keys[kProbeBatch];
  const int32_t* first[kProbeBatch];
  const int32_t* last[kProbeBatch];
  for (bool more = true; more;) {
    int count = 0;
    while (count < kProbeBatch && more) {
      keys[count++] = qkey ^ static_cast<uint32_t>(mask);
      const uint64_t lowest = mask & (~mask + 1), next = mask + lowest;
      more = mask != 0 && (mask = (((next ^ mask) >> 2) / lowest) | next) < end;
    }
    for (int c = 0; c < count; ++c) __builtin_prefetch(t.dir + (keys[c] >> low_bits));
    for (int c = 0; c < count; ++c) {
      const uint32_t top = keys[c] >> low_bits;
      first[c] = t.pos + t.dir[top];
      last[c] = t.pos + t.dir[top + 1];
      if (t.low != nullptr && first[c] != last[c]) {
        // Within a directory bucket the entries are sorted by their low bits.
        const auto range = std::equal_range(t.low + t.dir[top], t.low + t.dir[top + 1],
                                            static_cast<int32_t>(keys[c] & low_mask));
        first[c] = t.pos + (range.first - t.low);
        last[c] = t.pos + (range.second - t.low);
      }
      if (first[c] != last[c]) __builtin_prefetch(first[c]);
    }
    for (int c = 0; c < count; ++c) {
      const int32_t* stop = std::min(last[c], first[c] + kPrefetchCodes);
      for (const int32_t* p = first[c]; p != stop; ++p) __builtin_prefetch(index.codes + int64_t{*p} * index.code_size);
    }
    for (int c = 0; c < count; ++c) {
      budget -= 1 + (last[c] - first[c]);
      if (budget < 0) return false;
      for (const int32_t* p = first[c]; p != last[c]; ++p) visit(*p);
    }
  }
  return true;
}

std::vector<uint32_t> query_keys(const Index& index, const uint8_t* query) {
  std::vector<uint32_t> keys(static_cast<size_t>(index.m));
  for (int32_t i = 0; i < index.m; ++i) {
    keys[i] = substring(query, index.code_size, index.tables[i].bit_start, index.tables[i].bit_count);
  }
  return keys;
}

int64_t total_bits(const Index& index) {
  int64_t bits = 0;
  for (int32_t i = 0; i < index.m; ++i) bits += index.tables[i].bit_count;
  return bits;
}

}  // namespace

void build_table(const uint8_t* codes, int64_t n, int64_t code_size, int32_t bit_start, int32_t bit_count,
                 int32_t dir_bits, int32_t* dir, int32_t* low, int32_t* pos) {
  const int32_t low_bits = bit_count - dir_bits;
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) keys[j] = substring(codes + j * code_size, code_size, bit_start, bit_count);
  // Least-significant digit first: the low bits 16 at a time, each pass stable, so the final pass
  // on the directory bits leaves every bucket sorted by (low bits, position).
  std::vector<uint32_t> key_tmp(low_bits ? static_cast<size_t>(n) : 0);
  std::vector<int32_t> pos_tmp(low_bits ? static_cast<size_t>(n) : 0);
  std::vector<uint32_t> key_tmp2(low_bits > 16 ? static_cast<size_t>(n) : 0);
  std::vector<int32_t> pos_tmp2(low_bits > 16 ? static_cast<size_t>(n) : 0);
  const uint32_t* key_in = keys.data();
  const int32_t* pos_in = nullptr;
  for (int32_t shift = 0, pass = 0; shift < low_bits; shift += 16, ++pass) {
    uint32_t* key_out = pass % 2 ? key_tmp2.data() : key_tmp.data();
    int32_t* pos_out = pass % 2 ? pos_tmp2.data() : pos_tmp.data();
    counting_pass(n, key_in, pos_in, shift, std::min(16, low_bits - shift), key_out, pos_out);
    key_in = key_out;
    pos_in = pos_out;
  }
  // The directory pass: its histogram's prefix sums are the directory itself.
  const int64_t buckets = int64_t{1} << dir_bits;
  std::fill(dir, dir + buckets + 1, 0);
  for (int64_t j = 0; j < n; ++j) ++dir[(key_in[j] >> low_bits) + 1];
  for (int64_t b = 1; b <= buckets; ++b) dir[b] += dir[b - 1];
  std::vector<int32_t> front(dir, dir + buckets);
  const uint32_t low_mask = (uint32_t{1} << low_bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t at = front[key_in[j] >> low_bits]++;
    pos[at] = pos_in ? pos_in[j] : static_cast<int32_t>(j);
    if (low != nullptr) low[at] = static_cast<int32_t>(key_in[j] & low_mask);
  }
}

namespace {

// The bucket probes of step (r, i): a ring of radius r has C(bit_count, r) keys. Each costs at least
// one unit of budget (a probe and the codes its bucket holds), so this is a lower bound of the step's
// cost, whatever the codes.
double step_probes(const Index& index, int32_t r, int32_t i) {
  const int32_t bits = index.tables[i].bit_count;
  double keys = r <= bits ? 1 : 0;
  for (int32_t j = 0; j < r && j < bits; ++j) keys = keys * (bits - j) / (j + 1);
  return keys;
}

// The probes of the steps from (r, i) on, through the first one after which a radius of at least
// target is covered; counting stops once it passes limit.
double probes_to_cover(const Index& index, int32_t r, int32_t i, int64_t target, double limit) {
  for (double probes = 0;; ++i) {
    if (i == index.m) i = 0, ++r;
    probes += step_probes(index, r, i);
    if (probes > limit || covered(index, r, i) >= target) return probes;
  }
}

// Runs the steps (r, i) in order, calling visit(position, code, distance, i, r) for every allowed code
// probed, until stop(radius covered) holds or every code is covered. target is the radius a radius
// search must cover (-1 for k-NN, whose radius is known only at the end). Returns false when the
// budget ran out first, or before it would: when the probes of the next step, or those that cover
// target, exceed the budget left (each probe costs at least one unit), with nothing spent on them.
template <typename Visit, typename Stop>
bool progressive_search(const Index& index, const uint8_t* query, const std::vector<uint32_t>& qkeys,
                        const uint8_t* allow, int64_t budget, int64_t target, Visit&& visit, Stop&& stop) {
  const int64_t bits = total_bits(index);
  target = std::min(target, bits);  // the search ends once every bit is covered
  const auto affordable = [&](int32_t r, int32_t i) {
    const double left = static_cast<double>(budget);
    return step_probes(index, r, i) <= left && (target < 0 || probes_to_cover(index, r, i, target, left) <= left);
  };
  if (!affordable(0, 0)) return false;
  for (int32_t r = 0;; ++r) {
    for (int32_t i = 0; i < index.m; ++i) {
      const bool within_budget = probe_ring(index.tables[i], index, qkeys[i], r, budget, [&](int32_t p) {
        if (excluded(allow, p)) return;
        const uint8_t* code = index.codes + int64_t{p} * index.code_size;
        visit(p, code, distance(code, query, index.code_size), i, r);
      });
      if (!within_budget) return false;
      const int64_t radius = covered(index, r, i);
      if (radius >= bits || stop(radius)) return true;
      if (!affordable(i + 1 == index.m ? r + 1 : r, i + 1 == index.m ? 0 : i + 1)) return false;
    }
  }
}

}  // namespace

int64_t knn(const Index& index, const uint8_t* query, int64_t k, const uint8_t* allow, int64_t budget, int32_t* dist,
            int64_t* pos) {
  const std::vector<uint32_t> qkeys = query_keys(index, query);
  // A max-heap of (distance << 32 | position): the k best keys found so far.
  std::vector<uint64_t> heap;
  heap.reserve(static_cast<size_t>(k));
  const bool finished = progressive_search(
      index, query, qkeys, allow, budget, -1,
      [&](int32_t p, const uint8_t* code, int32_t d, int32_t i, int32_t r) {
        const uint64_t key = (uint64_t(d) << 32) | static_cast<uint32_t>(p);
        if (static_cast<int64_t>(heap.size()) == k && key >= heap.front()) return;
        if (!first_visit(index, qkeys.data(), code, i, r)) return;
        if (static_cast<int64_t>(heap.size()) == k) {
          std::pop_heap(heap.begin(), heap.end());
          heap.pop_back();
        }
        heap.push_back(key);
        std::push_heap(heap.begin(), heap.end());
      },
      [&](int64_t radius) {
        return static_cast<int64_t>(heap.size()) == k && static_cast<int64_t>(heap.front() >> 32) <= radius;
      });
  if (!finished) return -1;
  std::sort_heap(heap.begin(), heap.end());
  for (size_t j = 0; j < heap.size(); ++j) {
    dist[j] = static_cast<int32_t>(heap[j] >> 32);
    pos[j] = static_cast<int64_t>(heap[j] & 0xffffffffu);
  }
  return static_cast<int64_t>(heap.size());
}

bool radius_search(const Index& index, const uint8_t* query, int32_t radius, const uint8_t* allow, int64_t budget,
                   std::vector<std::pair<int32_t, int64_t>>& out) {
  const std::vector<uint32_t> qkeys = query_keys(index, query);
  const size_t first = out.size();
  const bool finished = progressive_search(
      index, query, qkeys, allow, budget, radius,
      [&](int32_t p, const uint8_t* code, int32_t d, int32_t i, int32_t r) {
        if (d <= radius && first_visit(index, qkeys.data(), code, i, r)) out.emplace_back(d, p);
      },
      [&](int64_t covered_radius) { return covered_radius >= radius; });
  if (!finished) {
    out.resize(first);
    return false;
  }
  std::sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
  return true;
}

}  // namespace cibhash::mih
