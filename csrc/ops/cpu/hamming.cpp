// CPU kernels of hamming_distance, hamming_topk and hamming_radius. One scan engine serves all three:
// it streams database tiles past register blocks of queries with XOR + popcount, and hands only
// the codes that beat a per-query threshold to a "sink" (a top-k heap, a radius list, a matrix).
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cpu/isa.h"
#include "ops/hamming.h"

namespace cibhash {
namespace {

// ---------------------------------------------------------------------------------------------
// Code layout inside the engine. A code of B bytes is read as W = ceil(B/8) little-endian 64-bit
// words, zero padded. A database tile is stored word-major, tile[w * n + j] = word w of code j, so
// one vector load brings word w of 8 (AVX-512) or 4 (AVX2) consecutive codes, and distances of
// several database codes come out in the lanes of one register without horizontal sums. 64-bit
// codes are already in that layout and are read in place; other widths are repacked per tile
// (cost O(tile) per tile, amortised over every query of the thread).
// ---------------------------------------------------------------------------------------------

constexpr int kQueryBlock = 8;  // queries held in registers while a tile streams past

// Repacks codes [n, B] (bytes) into the word-major tile [W, n]. WB is B when it is a specialised
// width (fixed-size copies compile to single moves) and 0 otherwise.
template <int WB>
void repack_tile(const uint8_t* codes, int64_t n, int64_t bytes, int64_t words, uint64_t* tile) {
  const int64_t B = WB > 0 ? WB : bytes;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* code = codes + j * B;
    for (int64_t w = 0; w < words; ++w) {
      uint64_t v = 0;
      const int64_t take = std::min<int64_t>(8, B - w * 8);
      std::memcpy(&v, code + w * 8, static_cast<size_t>(take));
      tile[w * n + j] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Sinks. Each receives (query, database index, distance) for codes whose distance is below
// threshold(query), in increasing database index order for a given query and range.
// ---------------------------------------------------------------------------------------------

// The k best (distance, index) pairs seen so far, for codes that arrive in increasing index order.
// Distances are small integers (0 .. 8B), so instead of a heap it keeps an append-only buffer and a
// histogram of the buffered distances. The threshold t is the smallest distance with at least k
// buffered codes at or below it: a later code at distance >= t can never enter the result (it
// loses on distance, or on index against the earlier codes at t), so only d < t is accepted.
// Appends are O(1); when the buffer reaches twice k it is compacted in order to at most k items.
struct TopkBuffer {
  int64_t k;
  int32_t threshold_ = INT32_MAX;  // accept d < threshold_
  int64_t below = 0;  // buffered codes with d < threshold_
  std::vector<int32_t> counts;  // buffered codes per distance, 0 .. max distance
  std::vector<std::pair<int32_t, int64_t>> items;  // (distance, index) in index order

  // Accepts codes at distance <= bound only (bound = max distance: every code).
  TopkBuffer(int64_t k_, int64_t max_distance, int64_t bound)
      : k(k_), threshold_(static_cast<int32_t>(bound + 1)), counts(static_cast<size_t>(max_distance + 2), 0) {
    items.reserve(static_cast<size_t>(std::min<int64_t>(2 * k, 1 << 16)));
  }

  int32_t threshold() const { return threshold_; }

  void push(int64_t i, int32_t d) {
    items.emplace_back(d, i);
    ++counts[d];
    ++below;
    while (below >= k) {
      --threshold_;
      below -= counts[threshold_];
    }
    if (static_cast<int64_t>(items.size()) >= 2 * k) compact();
  }

  // Keeps every item below the threshold and, at the threshold, the first ones in index order
  // until k items are kept; the histogram follows.
  void compact() {
    int64_t room_at_threshold = k - below;
    size_t kept = 0;
    for (const auto& item : items) {
      const bool keep = item.first < threshold_ || (item.first == threshold_ && room_at_threshold-- > 0);
      if (keep) {
        items[kept++] = item;
      } else {
        --counts[item.first];
      }
    }
    items.resize(kept);
  }

  // Writes the (at most k) kept items ordered by (distance, index): a stable counting sort.
  int64_t write_sorted(int32_t* dist, int64_t* idx) {
    compact();
    std::vector<int64_t> start(counts.size() + 1, 0);
    for (const auto& item : items) ++start[item.first + 1];
    for (size_t d = 1; d < start.size(); ++d) start[d] += start[d - 1];
    for (const auto& item : items) {
      const int64_t at_ = start[item.first]++;
      dist[at_] = item.first;
      idx[at_] = item.second;
    }
    return static_cast<int64_t>(items.size());
  }
};

// Database tiles hold about kTileBytes of codes (see tile_codes), so at most kMaxTileCodes codes.
constexpr int64_t kTileBytes = 32768;
constexpr int64_t kMaxTileCodes = kTileBytes / 8;

// An allow bitmap of a filtered search (bit i of byte i / 8: code i may be returned), or nullptr.
// It is checked where a code has beaten the threshold, so the scan itself is unchanged and the
// unfiltered search pays one predictable branch per hit.
inline bool excluded(const uint8_t* allow, int64_t i) { return allow != nullptr && !((allow[i >> 3] >> (i & 7)) & 1); }

struct TopkSink {
  TopkBuffer* buffers;  // indexed by query - first_query
  int64_t first_query;
  const uint8_t* allow = nullptr;
  int32_t threshold(int64_t q) const { return buffers[q - first_query].threshold(); }
  void push(int64_t q, int64_t i, int32_t d) {
    if (excluded(allow, i)) return;
    buffers[q - first_query].push(i, d);
  }
};

// Radius matches in the order the scan finds them (tile by tile), appended to one sequential log
// per task: a hit costs one 16-byte store and a pointer bump, where per-query lists cost a list
// header lookup and two scattered stores. The log grows by fixed blocks, so nothing is copied.
struct Hit {
  int64_t idx;
  uint32_t query;  // relative to the first query of its batch (a few thousand at most)
  int32_t dist;
};

class HitLog {
 public:
  static constexpr int64_t kBlock = 1 << 16;  // hits per block (1 MiB)

  void push(int64_t idx, uint32_t query, int32_t dist) {
    if (__builtin_expect(at_ == end_, 0)) grow();
    *at_++ = Hit{idx, query, dist};
  }
  int64_t size() const { return static_cast<int64_t>(blocks_.size()) * kBlock - (end_ - at_); }
  // Calls f(hit) for hits [a, b) in log order.
  template <typename F>
  void for_each(int64_t a, int64_t b, F&& f) const {
    while (a < b) {
      const int64_t end = std::min(b, (a / kBlock + 1) * kBlock);  // within a's block
      const Hit* h = blocks_[static_cast<size_t>(a / kBlock)].get() + a % kBlock;
      for (const Hit* stop = h + (end - a); h != stop; ++h) f(*h);
      a = end;
    }
  }

 private:
  __attribute__((noinline)) void grow() {
    std::unique_ptr<Hit[]> block(new Hit[kBlock]);  // trivial type: no zero fill
    blocks_.push_back(std::move(block));  // on bad_alloc the block is freed, the log unchanged
    at_ = blocks_.back().get();
    end_ = at_ + kBlock;
  }
  std::vector<std::unique_ptr<Hit[]>> blocks_;
  Hit* at_ = nullptr;
  Hit* end_ = nullptr;
};

struct RadiusSink {
  HitLog* log;
  int64_t* counts;  // matches per query, indexed by query
  int64_t first_query;  // of the batch being scanned
  int32_t limit;  // radius + 1
  const uint8_t* allow = nullptr;
  int32_t threshold(int64_t) const { return limit; }
  void push(int64_t q, int64_t i, int32_t d) {
    if (excluded(allow, i)) return;
    log->push(i, static_cast<uint32_t>(q - first_query), d);
    ++counts[q];
  }
};

struct MatrixSink {
  int32_t* out;
  int64_t n;
  int32_t threshold(int64_t) const { return INT32_MAX; }
  void push(int64_t q, int64_t i, int32_t d) { out[q * n + i] = d; }
};

// The distance matrix takes every lane, so it gets whole groups of 8 (AVX-512 path).
template <typename Sink>
constexpr bool kTakesGroups = std::is_same_v<Sink, MatrixSink>;

__attribute__((target("avx512f"))) inline void push_group(MatrixSink& sink, int64_t q, int64_t first_index,
                                                          __mmask8 hits, __m512i dist) {
  _mm512_mask_cvtepi64_storeu_epi32(sink.out + q * sink.n + first_index, hits, dist);
}

// ---------------------------------------------------------------------------------------------
// Tile scans: queries [q0, q0 + R) (their words at qwords, W per query) against the tile of n codes
// whose first code has database index base. WT is W when specialised, 0 for a runtime width.
// ---------------------------------------------------------------------------------------------

template <int WT, typename Sink>
void scan_tile_scalar(const uint64_t* tile, int64_t n, int64_t base, const uint64_t* qwords, int64_t W, int64_t q0,
                      int R, Sink& sink) {
  const int64_t words = WT > 0 ? WT : W;
  for (int r = 0; r < R; ++r) {
    const uint64_t* q = qwords + r * words;
    int32_t thr = sink.threshold(q0 + r);
    for (int64_t j = 0; j < n; ++j) {
      int32_t d = 0;
      for (int64_t w = 0; w < words; ++w) d += __builtin_popcountll(tile[w * n + j] ^ q[w]);
      if (d < thr) {
        sink.push(q0 + r, base + j, d);
        thr = sink.threshold(q0 + r);
      }
    }
  }
}

// AVX2 has no vector popcount: per-byte counts come from a 16-entry nibble table (PSHUFB), and
// PSADBW sums the bytes of each 64-bit lane.
__attribute__((target("avx2"))) inline __m256i popcount_epi64_avx2(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

template <int WT, int RB, typename Sink>
__attribute__((target("avx2"))) void scan_tile_avx2(const uint64_t* tile, int64_t n, int64_t base,
                                                    const uint64_t* qwords, int64_t W, int64_t q0, Sink& sink) {
  const int64_t words = WT > 0 ? WT : W;
  __m256i thr[RB];
  for (int r = 0; r < RB; ++r) thr[r] = _mm256_set1_epi64x(sink.threshold(q0 + r));
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    __m256i acc[RB];
    for (int r = 0; r < RB; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t w = 0; w < words; ++w) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + w * n + j));
      for (int r = 0; r < RB; ++r) {
        const __m256i q = _mm256_set1_epi64x(static_cast<long long>(qwords[r * words + w]));
        acc[r] = _mm256_add_epi64(acc[r], popcount_epi64_avx2(_mm256_xor_si256(v, q)));
      }
    }
    int any = 0;
    int mask[RB];
    for (int r = 0; r < RB; ++r) {
      mask[r] = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(thr[r], acc[r])));
      any |= mask[r];
    }
    if (__builtin_expect(any == 0, 1)) continue;
    for (int r = 0; r < RB; ++r) {
      if (!mask[r]) continue;
      alignas(32) int64_t d[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(d), acc[r]);
      for (int m = mask[r]; m; m &= m - 1) {
        const int lane = __builtin_ctz(m);
        if (d[lane] < sink.threshold(q0 + r)) sink.push(q0 + r, base + j + lane, static_cast<int32_t>(d[lane]));
      }
      thr[r] = _mm256_set1_epi64x(sink.threshold(q0 + r));
    }
  }
  if (j < n) {
    // The last partial group of codes: scalar, same order, same rule.
    for (int r = 0; r < RB; ++r) {
      for (int64_t t = j; t < n; ++t) {
        int32_t d = 0;
        for (int64_t w = 0; w < words; ++w) d += __builtin_popcountll(tile[w * n + t] ^ qwords[r * words + w]);
        if (d < sink.threshold(q0 + r)) sink.push(q0 + r, base + t, d);
      }
    }
  }
}

// Distances of the codes j .. j+7 of the tile (lanes beyond `valid` are ignored) to RB queries,
// handed to the sink where they beat its threshold. The hot loop below calls this only for the
// rare groups with a hit. The RB hit masks are gathered into one bitmap whose set bits are then
// visited, each reading its distance back from the vectors stored on the stack: usually one or two,
// with no per-query branch to mispredict. Against recomputing each set bit's distance with scalar
// popcounts and a word loop of run-time length, this measured 0.89-0.95x the time of W1 and 0.97x
// of W3 (interleaved in one process, 2 threads).
template <int WT, int RB, typename Sink>
__attribute__((target("avx512f,avx512vpopcntdq"), noinline)) void push_hits_avx512(
    const uint64_t* tile, int64_t n, int64_t j, __mmask8 valid, int64_t base, const uint64_t* qwords, int64_t words,
    int64_t q0, Sink& sink) {
  static_assert(RB <= 8, "the hit bitmap holds 8 queries of 8 lanes");
  const int64_t W = WT > 0 ? WT : words;
  __m512i v[WT > 0 ? WT : 1];  // a fixed width's words, loaded once for every query
  if constexpr (WT > 0) {
    for (int w = 0; w < WT; ++w) v[w] = _mm512_maskz_loadu_epi64(valid, tile + w * n + j);
  }
  alignas(64) int64_t dist[RB][8];
  uint64_t bitmap = 0;
  for (int r = 0; r < RB; ++r) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t w = 0; w < W; ++w) {
      __m512i x;
      if constexpr (WT > 0) {
        x = v[w];
      } else {
        x = _mm512_maskz_loadu_epi64(valid, tile + w * n + j);
      }
      const __m512i q = _mm512_set1_epi64(static_cast<long long>(qwords[r * W + w]));
      acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, q)));
    }
    const __mmask8 hits = _mm512_mask_cmplt_epi64_mask(valid, acc, _mm512_set1_epi64(sink.threshold(q0 + r)));
    if constexpr (kTakesGroups<Sink>) {
      push_group(sink, q0 + r, base + j, hits, acc);
    } else {
      _mm512_store_si512(dist[r], acc);
      bitmap |= static_cast<uint64_t>(hits) << (8 * r);
    }
  }
  for (; bitmap; bitmap &= bitmap - 1) {
    const int bit = __builtin_ctzll(bitmap), r = bit >> 3, lane = bit & 7;
    const int32_t d = static_cast<int32_t>(dist[r][lane]);
    if (d < sink.threshold(q0 + r)) sink.push(q0 + r, base + j + lane, d);
  }
}

// dist[r]: distances of the codes j .. j+7 of the tile to query r (lanes outside valid read 0).
template <int WT, int RB>
__attribute__((target("avx512f,avx512vpopcntdq"), always_inline)) inline void group_distances(
    const uint64_t* tile, int64_t n, int64_t j, __mmask8 valid, const uint64_t* qwords, int64_t words, __m512i* dist) {
  for (int r = 0; r < RB; ++r) dist[r] = _mm512_setzero_si512();
  for (int64_t w = 0; w < (WT > 0 ? WT : words); ++w) {
    const __m512i v = _mm512_maskz_loadu_epi64(valid, tile + w * n + j);
    for (int r = 0; r < RB; ++r) {
      const __m512i q = _mm512_set1_epi64(static_cast<long long>(qwords[r * words + w]));
      dist[r] = _mm512_add_epi64(dist[r], _mm512_popcnt_epi64(_mm512_xor_si512(v, q)));
    }
  }
}

// Per lane, the smallest distance of the codes j .. j+7 to the RB queries. The hot loops test it
// against the loosest threshold of the block: one compare for all queries, and per query only
// XOR + popcount + minimum. A distance fits the low half of its lane (the high half is 0), so the
// 32-bit minimum gives the same lanes as the 64-bit one, and VPMINUD is the faster instruction on
// AMD Zen 5: a micro-benchmark of this loop in L1 ran at 18.1 G pairs/s with it, 14.3 with VPMINUQ
// and 14.5 with the per-query (distance - threshold) sign test (popcount limit: 19.4).
template <int WT, int RB>
__attribute__((target("avx512f,avx512vpopcntdq"), always_inline)) inline __m512i nearest_in_group(
    const uint64_t* tile, int64_t n, int64_t j, const uint64_t* qwords, int64_t words) {
  __m512i dist[RB];
  group_distances<WT, RB>(tile, n, j, __mmask8(0xff), qwords, words, dist);
  __m512i nearest = dist[0];
  for (int r = 1; r < RB; ++r) nearest = _mm512_min_epu32(nearest, dist[r]);
  return nearest;
}

// The largest threshold of queries [q0, q0 + RB): a code whose nearest distance is not below it has
// no hit for any of them.
template <int RB, typename Sink>
int32_t loosest_threshold(const Sink& sink, int64_t q0) {
  int32_t loosest = 0;
  for (int r = 0; r < RB; ++r) loosest = std::max(loosest, sink.threshold(q0 + r));
  return loosest;
}

// The hot loop: 8 database codes per vector, RB queries per loaded vector. A group of 8 codes is
// handed to push_hits_avx512, which recomputes the distances and checks each query's threshold,
// only when its nearest distance beats the loosest threshold: the per-query distances stay in
// registers (nothing is spilled) and most groups cost one compare.
template <int WT, int RB, typename Sink>
__attribute__((target("avx512f,avx512vpopcntdq"))) void scan_tile_avx512(const uint64_t* tile, int64_t n,
                                                                          int64_t base, const uint64_t* qwords,
                                                                          int64_t W, int64_t q0, Sink& sink) {
  const int64_t words = WT > 0 ? WT : W;
  __m512i limit = _mm512_set1_epi64(loosest_threshold<RB>(sink, q0));
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m512i nearest = nearest_in_group<WT, RB>(tile, n, j, qwords, words);
    if (__builtin_expect(_mm512_cmplt_epu64_mask(nearest, limit) == 0, 1)) continue;
    push_hits_avx512<WT, RB>(tile, n, j, __mmask8(0xff), base, qwords, words, q0, sink);
    if constexpr (std::is_same_v<Sink, TopkSink>) limit = _mm512_set1_epi64(loosest_threshold<RB>(sink, q0));
  }
  // The last partial group: masked loads never touch memory past the tile.
  if (j < n) push_hits_avx512<WT, RB>(tile, n, j, __mmask8((1u << (n - j)) - 1), base, qwords, words, q0, sink);
}

// The branch-free noting shared by the hot loops: the starts of the groups of G codes of a tile of
// n codes for which hit(j) may hold, in index order. Every slot is written and the count advances
// by 0 or 1, so a hit rate of a few percent costs no mispredicted branch; the last partial group is
// always noted. Returns how many were noted.
template <int G, typename Hit>
__attribute__((always_inline)) inline int64_t note_groups(int64_t n, int32_t* noted, Hit&& hit) {
  int64_t count = 0;
  for (int64_t j = 0; j + G <= n; j += G) {
    noted[count] = static_cast<int32_t>(j);
    count += hit(j);
  }
  if (n % G) noted[count++] = static_cast<int32_t>(n / G * G);
  return count;
}

// note_groups over groups of 8 codes of a word-major tile: those whose nearest distance to the RB
// queries is below limit.
template <int WT, int RB>
__attribute__((target("avx512f,avx512vpopcntdq"), always_inline)) inline int64_t note_near_groups(
    const uint64_t* tile, int64_t n, const uint64_t* qwords, int64_t words, __m512i limit, int32_t* noted) {
  return note_groups<8>(n, noted, [&](int64_t j) __attribute__((target("avx512f,avx512vpopcntdq"))) {
    return _mm512_cmplt_epu64_mask(nearest_in_group<WT, RB>(tile, n, j, qwords, words), limit) != 0;
  });
}

// The top-k hot loop for codes of one word, built like the radius one below: groups of 8 codes where
// some query may beat its threshold are noted without a branch, then handed to push_hits_avx512 in
// index order, which recomputes them and checks each lane against the query's current threshold.
// The thresholds of the scan are those at the start of the tile; they only fall, so every group
// with a true hit is noted. Measured at 2 threads (interleaved medians): W2 (32-bit, k = 1000,
// before it moved to the 32-bit-lane path) 89-94 -> 80-84 ms and W1 47 -> 45-46 ms, where hits are
// frequent enough for the plain loop's branch to mispredict; wider codes (W3, 128-bit, k = 10) ran
// 20% slower this way, and again 10-30% slower after the VPMINUD change, so they keep the plain loop.
template <int WT, int RB>
__attribute__((target("avx512f,avx512vpopcntdq"))) void scan_tile_avx512_topk(const uint64_t* tile, int64_t n,
                                                                               int64_t base, const uint64_t* qwords,
                                                                               int64_t W, int64_t q0, TopkSink& sink) {
  static_assert(WT == 1, "codes of one 64-bit word");
  int32_t noted[kMaxTileCodes / 8 + 1];
  const __m512i limit = _mm512_set1_epi64(loosest_threshold<RB>(sink, q0));
  const int64_t count = note_near_groups<WT, RB>(tile, n, qwords, W, limit, noted);
  for (int64_t c = 0; c < count; ++c) {
    const int64_t j = noted[c];
    const __mmask8 valid = static_cast<__mmask8>(n - j >= 8 ? 0xff : (1u << (n - j)) - 1);
    push_hits_avx512<WT, RB>(tile, n, j, valid, base, qwords, W, q0, sink);
  }
}

// The radius hot loop. Every query has the same threshold (radius + 1). About one group in ten has
// a hit at typical radii (W5: 11%), too often for a branch to predict, so the scan only notes such
// groups without a branch (the slot is always written, the count advances by 0 or 1); a second,
// short pass over the noted groups recomputes their distances and pushes the hits in index order.
// Measured on W5 (1 thread): 140 -> 113 ms.
template <int WT, int RB>
__attribute__((target("avx512f,avx512vpopcntdq"))) void scan_tile_avx512_radius(const uint64_t* tile, int64_t n,
                                                                                 int64_t base,
                                                                                 const uint64_t* qwords, int64_t W,
                                                                                 int64_t q0, RadiusSink& sink) {
  static_assert(RB <= 8, "the hit bitmap holds 8 queries of 8 lanes");
  const int64_t words = WT > 0 ? WT : W;
  const __m512i limit = _mm512_set1_epi64(sink.limit);
  int32_t noted[kMaxTileCodes / 8 + 1];
  const int64_t count = note_near_groups<WT, RB>(tile, n, qwords, words, limit, noted);
  for (int64_t c = 0; c < count; ++c) {
    const int64_t j = noted[c];
    const __mmask8 valid = static_cast<__mmask8>(n - j >= 8 ? 0xff : (1u << (n - j)) - 1);
    // Inline rather than push_hits_avx512: the shared threshold needs no re-check per hit, and the
    // call measured 1-1.5% slower on W5 (1 thread, interleaved minima 101.1-101.4 vs 99.5-100.5 ms).
    // The hits' distances are read back from the stored vectors (0.93x the time of W5 against
    // recomputing each with scalar popcounts, interleaved in one process).
    __m512i dist[RB];
    group_distances<WT, RB>(tile, n, j, valid, qwords, words, dist);
    alignas(64) int64_t stored[RB][8];
    uint64_t bitmap = 0;
    for (int r = 0; r < RB; ++r) {
      _mm512_store_si512(stored[r], dist[r]);
      bitmap |= uint64_t{_mm512_mask_cmplt_epu64_mask(valid, dist[r], limit)} << (8 * r);
    }
    for (; bitmap; bitmap &= bitmap - 1) {
      const int bit = __builtin_ctzll(bitmap), r = bit >> 3, lane = bit & 7;
      sink.push(q0 + r, base + j + lane, static_cast<int32_t>(stored[r][lane]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Codes of up to 32 bits on AVX-512: a tile of 32-bit lanes (4-byte codes are read in place), so
// one VPOPCNTD covers 16 codes and a query costs half the instructions per code of the 64-bit
// path. Groups of 16 codes where some query may beat the loosest threshold are noted without a
// branch, then recomputed in index order against each query's own current threshold.
// ---------------------------------------------------------------------------------------------

// Repacks codes [n, B] (B <= 4 bytes) into 32-bit lanes, zero padded.
template <int WB>
void repack_tile_narrow(const uint8_t* codes, int64_t n, int64_t bytes, uint32_t* tile) {
  const int64_t B = WB > 0 ? WB : bytes;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t v = 0;
    std::memcpy(&v, codes + j * B, static_cast<size_t>(B));
    tile[j] = v;
  }
}

// Hits among the codes j .. j+15 (lanes outside valid ignored) handed to the sink in index order.
// Hit masks of 4 queries share one 64-bit bitmap (bit 16 r + lane).
template <int RB, typename Sink>
__attribute__((target("avx512f,avx512vpopcntdq"), noinline)) void push_hits_narrow(const uint32_t* tile, int64_t j,
                                                                                    __mmask16 valid, int64_t base,
                                                                                    const uint64_t* qwords, int64_t W,
                                                                                    int64_t q0, Sink& sink) {
  const __m512i v = _mm512_maskz_loadu_epi32(valid, tile + j);
  for (int r0 = 0; r0 < RB; r0 += 4) {
    uint64_t bitmap = 0;
    for (int r = r0; r < std::min(RB, r0 + 4); ++r) {
      const __m512i d = _mm512_popcnt_epi32(_mm512_xor_si512(v, _mm512_set1_epi32(static_cast<int>(qwords[r * W]))));
      const __mmask16 hits = _mm512_mask_cmplt_epu32_mask(valid, d, _mm512_set1_epi32(sink.threshold(q0 + r)));
      bitmap |= static_cast<uint64_t>(hits) << (16 * (r - r0));
    }
    for (; bitmap; bitmap &= bitmap - 1) {
      const int bit = __builtin_ctzll(bitmap), r = r0 + (bit >> 4), lane = bit & 15;
      const int32_t d = __builtin_popcount(tile[j + lane] ^ static_cast<uint32_t>(qwords[r * W]));
      if (d < sink.threshold(q0 + r)) sink.push(q0 + r, base + j + lane, d);
    }
  }
}

template <int RB, typename Sink>
__attribute__((target("avx512f,avx512vpopcntdq"))) void scan_tile_narrow(const uint32_t* tile, int64_t n,
                                                                          int64_t base, const uint64_t* qwords,
                                                                          int64_t W, int64_t q0, Sink& sink) {
  const __m512i limit = _mm512_set1_epi32(loosest_threshold<RB>(sink, q0));
  __m512i q[RB];
  for (int r = 0; r < RB; ++r) q[r] = _mm512_set1_epi32(static_cast<int>(qwords[r * W]));
  int32_t noted[kMaxTileCodes / 16 + 1];
  const int64_t count = note_groups<16>(n, noted, [&](int64_t j) __attribute__((target("avx512f,avx512vpopcntdq"))) {
    const __m512i v = _mm512_loadu_si512(tile + j);
    __m512i nearest = _mm512_popcnt_epi32(_mm512_xor_si512(v, q[0]));
    for (int r = 1; r < RB; ++r) nearest = _mm512_min_epu32(nearest, _mm512_popcnt_epi32(_mm512_xor_si512(v, q[r])));
    return _mm512_cmplt_epu32_mask(nearest, limit) != 0;
  });
  for (int64_t c = 0; c < count; ++c) {
    const int64_t j = noted[c];
    const __mmask16 valid = static_cast<__mmask16>(n - j >= 16 ? 0xffff : (1u << (n - j)) - 1);
    push_hits_narrow<RB>(tile, j, valid, base, qwords, W, q0, sink);
  }
}

// The sinks the narrow path serves (the distance matrix keeps the 64-bit path).
template <typename Sink>
constexpr bool kNarrowSink = std::is_same_v<Sink, TopkSink> || std::is_same_v<Sink, RadiusSink>;

// Queries [0, R) of a block, R <= kQueryBlock, in register blocks: a full block whole, a partial one
// (a small batch, or the last block) in blocks of 4, 2 and 1, so that each block passes over the
// tile once instead of once per query. Calls run(std::integral_constant<int, RB>, first query).
template <typename Run>
void in_query_blocks(int R, Run&& run) {
  if (R == kQueryBlock) return run(std::integral_constant<int, kQueryBlock>{}, 0);
  int r = 0;
  if (R - r >= 4) run(std::integral_constant<int, 4>{}, r), r += 4;
  if (R - r >= 2) run(std::integral_constant<int, 2>{}, r), r += 2;
  if (R - r >= 1) run(std::integral_constant<int, 1>{}, r);
}

template <typename Sink>
void scan_tile_narrow_block(const uint32_t* tile, int64_t n, int64_t base, const uint64_t* qwords, int64_t W,
                            int64_t q0, int R, Sink& sink) {
  in_query_blocks(R, [&](auto rb, int r) {
    scan_tile_narrow<decltype(rb)::value>(tile, n, base, qwords + r * W, W, q0 + r, sink);
  });
}

// Queries [q0, q0 + R) against one tile, on the fastest instruction set, R = kQueryBlock or less.
template <int WT, typename Sink>
void scan_tile(Isa isa, const uint64_t* tile, int64_t n, int64_t base, const uint64_t* qwords, int64_t W, int64_t q0,
               int R, Sink& sink) {
  if (isa == Isa::kAvx512) {
    in_query_blocks(R, [&](auto rb, int r) {
      constexpr int RB = decltype(rb)::value;
      const uint64_t* qw = qwords + r * W;
      if constexpr (std::is_same_v<Sink, TopkSink> && WT == 1) {
        scan_tile_avx512_topk<WT, RB>(tile, n, base, qw, W, q0 + r, sink);
      } else if constexpr (std::is_same_v<Sink, RadiusSink>) {
        scan_tile_avx512_radius<WT, RB>(tile, n, base, qw, W, q0 + r, sink);
      } else {
        scan_tile_avx512<WT, RB>(tile, n, base, qw, W, q0 + r, sink);
      }
    });
  } else if (isa == Isa::kAvx2) {
    if (R == kQueryBlock) return scan_tile_avx2<WT, kQueryBlock>(tile, n, base, qwords, W, q0, sink);
    for (int r = 0; r < R; ++r) scan_tile_avx2<WT, 1>(tile, n, base, qwords + r * W, W, q0 + r, sink);
  } else {
    scan_tile_scalar<WT>(tile, n, base, qwords, W, q0, R, sink);
  }
}

// Everything the scan of one (query range x database range) needs.
struct ScanProblem {
  const uint64_t* qwords;  // [Q, W] queries as zero-padded 64-bit words
  const uint8_t* database;  // [N, B]
  int64_t bytes;  // B
  int64_t words;  // W
  Isa isa;
};

// Database tile length: word-major tiles of about 32 KiB stay in L1/L2 while every query block of
// the thread streams over them.
int64_t tile_codes(int64_t words) { return std::max<int64_t>(64, (kTileBytes / (8 * words)) / 8 * 8); }

template <int WT, int WB, typename Sink>
void scan_range_impl(const ScanProblem& p, int64_t q0, int64_t q1, int64_t n0, int64_t n1, Sink& sink) {
  const int64_t W = p.words;
  const int64_t T = tile_codes(W);
  if constexpr (kNarrowSink<Sink> && WT == 1) {
    if (p.isa == Isa::kAvx512 && p.bytes <= 4) {
      std::vector<uint32_t> buffer(p.bytes == 4 ? 0 : static_cast<size_t>(T));
      for (int64_t t0 = n0; t0 < n1; t0 += T) {
        const int64_t n = std::min(T, n1 - t0);
        const uint32_t* tile = reinterpret_cast<const uint32_t*>(p.database) + t0;
        if (p.bytes != 4) {
          repack_tile_narrow<WB>(p.database + t0 * p.bytes, n, p.bytes, buffer.data());
          tile = buffer.data();
        }
        for (int64_t q = q0; q < q1; q += kQueryBlock) {
          const int R = static_cast<int>(std::min<int64_t>(kQueryBlock, q1 - q));
          scan_tile_narrow_block(tile, n, t0, p.qwords + q * W, W, q, R, sink);
        }
      }
      return;
    }
  }
  const bool in_place = p.bytes == 8 * W && W == 1;
  std::vector<uint64_t> buffer(in_place ? 0 : static_cast<size_t>(T * W));
  for (int64_t t0 = n0; t0 < n1; t0 += T) {
    const int64_t n = std::min(T, n1 - t0);
    const uint64_t* tile;
    if (in_place) {
      tile = reinterpret_cast<const uint64_t*>(p.database) + t0;
    } else {
      repack_tile<WB>(p.database + t0 * p.bytes, n, p.bytes, W, buffer.data());
      tile = buffer.data();
    }
    for (int64_t q = q0; q < q1; q += kQueryBlock) {
      const int R = static_cast<int>(std::min<int64_t>(kQueryBlock, q1 - q));
      scan_tile<WT>(p.isa, tile, n, t0, p.qwords + q * W, W, q, R, sink);
    }
  }
}

// The single switch that turns the runtime code width into template arguments: 16, 32, 64, 128
// and 256-bit codes get fixed word counts and fixed-size repacking; any other width is generic.
template <typename Sink>
void scan_range(const ScanProblem& p, int64_t q0, int64_t q1, int64_t n0, int64_t n1, Sink& sink) {
  switch (p.bytes) {
    case 2: return scan_range_impl<1, 2>(p, q0, q1, n0, n1, sink);
    case 4: return scan_range_impl<1, 4>(p, q0, q1, n0, n1, sink);
    case 8: return scan_range_impl<1, 8>(p, q0, q1, n0, n1, sink);
    case 16: return scan_range_impl<2, 16>(p, q0, q1, n0, n1, sink);
    case 32: return scan_range_impl<4, 32>(p, q0, q1, n0, n1, sink);
    default:
      if (p.words == 1) return scan_range_impl<1, 0>(p, q0, q1, n0, n1, sink);
      return scan_range_impl<0, 0>(p, q0, q1, n0, n1, sink);
  }
}

// Queries as zero-padded words, so the engine never reads a query byte past its code.
std::vector<uint64_t> query_words(const uint8_t* queries, int64_t Q, int64_t B, int64_t W) {
  std::vector<uint64_t> out(static_cast<size_t>(Q * W), 0);
  for (int64_t q = 0; q < Q; ++q) {
    for (int64_t w = 0; w < W; ++w) {
      std::memcpy(&out[q * W + w], queries + q * B + w * 8, static_cast<size_t>(std::min<int64_t>(8, B - w * 8)));
    }
  }
  return out;
}

// How the work is split over threads: by queries when there are enough of them for every thread
// to hold full register blocks, otherwise by database chunks whose results are merged afterwards.
// A chunk holds at least kChunkCodes / min(Q, 8) codes: one pass of a register block over them is
// worth a thread's wake-up. One query's k-NN over 8,192-32,768 codes took 12-19 us as one chunk and
// 16-24 us as two with 4,096 codes the minimum (2 threads, interleaved in one process); from 65,536
// codes on the two split alike.
constexpr int64_t kChunkCodes = 32768;

struct Split {
  int64_t tasks;
  bool by_database;
};

Split choose_split(int64_t Q, int64_t N) {
  const int64_t threads = std::max<int64_t>(1, static_cast<int64_t>(torch::stable::get_num_threads()));
  if (threads == 1) return {1, false};
  if (Q >= threads * kQueryBlock * 4) return {threads, false};
  const int64_t min_codes = kChunkCodes / std::min<int64_t>(std::max<int64_t>(Q, 1), kQueryBlock);
  const int64_t chunks = std::min<int64_t>(threads, std::max<int64_t>(1, N / min_codes));
  return {chunks, chunks > 1};
}

int64_t range_start(int64_t total, int64_t parts, int64_t i) { return total * i / parts; }

// Inputs as the engine wants them; the tensors keep the contiguous copies alive.
struct Prepared {
  Tensor queries, database;
  std::vector<uint64_t> qwords;
  ScanProblem problem;

  Prepared(const Tensor& q, const Tensor& db)
      : queries(as_contiguous(q)), database(as_contiguous(db)) {
    const int64_t B = q.size(1);
    const int64_t W = (B + 7) / 8;
    qwords = query_words(queries.const_data_ptr<uint8_t>(), q.size(0), B, W);
    problem = ScanProblem{qwords.data(), database.const_data_ptr<uint8_t>(), B, W, active_isa()};
  }
};

Tensor hamming_distance_cpu(const Tensor& queries, const Tensor& database) {
  check_query_database(queries, database, "hamming_distance");
  const int64_t Q = queries.size(0), N = database.size(0);
  Tensor out = empty_like_device({Q, N}, ScalarType::Int, queries);
  if (Q == 0 || N == 0) return out;
  const Prepared pr(queries, database);
  const Split split = choose_split(Q, N);
  MatrixSink sink{out.mutable_data_ptr<int32_t>(), N};
  torch::stable::parallel_for(0, split.tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      MatrixSink local = sink;
      if (split.by_database) {
        scan_range(pr.problem, 0, Q, range_start(N, split.tasks, t), range_start(N, split.tasks, t + 1), local);
      } else {
        scan_range(pr.problem, range_start(Q, split.tasks, t), range_start(Q, split.tasks, t + 1), 0, N, local);
      }
    }
  });
  return out;
}

// A scan in index order pushes about k (1 + ln(N / k)) codes per query into its buffer before
// the threshold settles. From k = 64 a starting bound cuts that to a few k: the distance within
// which a strided 1/64 sample of the database holds 2k/64 (+8) codes, so a few k codes of the
// whole database are expected within it. The bound only has to be an estimate: a query that ends
// with fewer than k codes within its bound is scanned again without one, so results stay exact.
// Against 1/16 from k = 256, interleaved in one process (2 threads): W1 (k = 100) 0.92-0.95x the
// time in three runs, W4 (k = 100) 0.93x, W2 (k = 1000) 0.88-0.99x; k = 10 (W3) lost from any
// sample (1.23x with 1/16 from k = 8).
constexpr int64_t kSampleStride = 64;
constexpr int64_t kMinSampledK = 64;

struct Sample {
  std::vector<uint8_t> codes;  // every kSampleStride-th database code, [S, B]
  int64_t size = 0;
  int64_t k = 0;  // codes of the sample that set the bound; 0: no sampling
};

Sample make_sample(const Prepared& pr, int64_t N, int64_t k) {
  Sample sample;
  const int64_t B = pr.problem.bytes;
  sample.size = N / kSampleStride;
  sample.k = (2 * k + kSampleStride - 1) / kSampleStride + 8;
  if (k < kMinSampledK || sample.k > sample.size) return Sample{};
  sample.codes.resize(static_cast<size_t>(sample.size * B));
  for (int64_t j = 0; j < sample.size; ++j) {
    std::memcpy(&sample.codes[j * B], pr.problem.database + j * kSampleStride * B, static_cast<size_t>(B));
  }
  return sample;
}

// Per query of [q0, q1): the bound to start its top-k scan with (the max distance if none).
std::vector<int32_t> sampled_bounds(const Prepared& pr, const Sample& sample, int64_t q0, int64_t q1) {
  const int64_t max_distance = 8 * pr.problem.bytes;
  std::vector<int32_t> bounds(static_cast<size_t>(q1 - q0), static_cast<int32_t>(max_distance));
  if (sample.k == 0) return bounds;
  ScanProblem problem = pr.problem;
  problem.database = sample.codes.data();
  std::vector<TopkBuffer> buffers;
  buffers.reserve(static_cast<size_t>(q1 - q0));
  for (int64_t q = q0; q < q1; ++q) buffers.emplace_back(sample.k, max_distance, max_distance);
  TopkSink sink{buffers.data(), q0};
  scan_range(problem, q0, q1, 0, sample.size, sink);
  std::vector<int32_t> dist(static_cast<size_t>(sample.k));
  std::vector<int64_t> idx(static_cast<size_t>(sample.k));
  for (int64_t q = q0; q < q1; ++q) {
    buffers[q - q0].write_sorted(dist.data(), idx.data());
    bounds[q - q0] = dist.back();
  }
  return bounds;
}

// The top-k search of hamming_topk and hamming_topk_filtered (allow: nullptr, or a bitmap with at
// least k codes allowed).
std::tuple<Tensor, Tensor> topk_search(const Tensor& queries, const Tensor& database, int64_t k,
                                               const uint8_t* allow) {
  const int64_t Q = queries.size(0), N = database.size(0);
  Tensor dist = empty_like_device({Q, k}, ScalarType::Int, queries);
  Tensor idx = empty_like_device({Q, k}, ScalarType::Long, queries);
  if (Q == 0 || k == 0) return {dist, idx};
  const Prepared pr(queries, database);
  const Split split = choose_split(Q, N);
  int32_t* out_d = dist.mutable_data_ptr<int32_t>();
  int64_t* out_i = idx.mutable_data_ptr<int64_t>();

  const int64_t max_distance = 8 * queries.size(1);
  if (!split.by_database) {
    // The sampled bound counts every code; under a filter it would mostly be too tight.
    const Sample sample = allow != nullptr ? Sample{} : make_sample(pr, N, k);
    torch::stable::parallel_for(0, split.tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        // Queries go in batches whose buffers and histograms fit a fixed budget, so memory stays
        // O(k) per query in flight whatever Q is.
        const int64_t q_first = range_start(Q, split.tasks, t), q_last = range_start(Q, split.tasks, t + 1);
        const int64_t per_query = 2 * k * 16 + (max_distance + 2) * 4;
        const int64_t batch = std::max<int64_t>(kQueryBlock, (int64_t{64} << 20) / per_query);
        for (int64_t q0 = q_first; q0 < q_last; q0 += batch) {
          const int64_t q1 = std::min(q_last, q0 + batch);
          const std::vector<int32_t> bounds = sampled_bounds(pr, sample, q0, q1);
          std::vector<TopkBuffer> buffers;
          buffers.reserve(static_cast<size_t>(q1 - q0));
          for (int64_t q = q0; q < q1; ++q) buffers.emplace_back(k, max_distance, bounds[q - q0]);
          TopkSink sink{buffers.data(), q0, allow};
          scan_range(pr.problem, q0, q1, 0, N, sink);
          for (int64_t q = q0; q < q1; ++q) {
            if (buffers[q - q0].write_sorted(out_d + q * k, out_i + q * k) == k) continue;
            // Fewer than k codes lie within the sampled bound: scan this query again, unbounded.
            TopkBuffer exact(k, max_distance, max_distance);
            TopkSink one{&exact, q, allow};
            scan_range(pr.problem, q, q + 1, 0, N, one);
            exact.write_sorted(out_d + q * k, out_i + q * k);
          }
        }
      }
    });
    return {dist, idx};
  }

  // Few queries: each database chunk keeps its own k best per query, then the chunks' sorted lists
  // are merged per query by (distance, index).
  const int64_t C = split.tasks;
  std::vector<int32_t> part_d(static_cast<size_t>(C * Q * k));
  std::vector<int64_t> part_i(static_cast<size_t>(C * Q * k));
  std::vector<int64_t> part_n(static_cast<size_t>(C * Q));
  torch::stable::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      std::vector<TopkBuffer> buffers(static_cast<size_t>(Q), TopkBuffer(k, max_distance, max_distance));
      TopkSink sink{buffers.data(), 0, allow};
      scan_range(pr.problem, 0, Q, range_start(N, C, c), range_start(N, C, c + 1), sink);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t off = (c * Q + q) * k;
        part_n[c * Q + q] = buffers[q].write_sorted(part_d.data() + off, part_i.data() + off);
      }
    }
  });
  torch::stable::parallel_for(0, Q, 1, [&](int64_t qa, int64_t qb) {
    std::vector<std::pair<int32_t, int64_t>> all;
    for (int64_t q = qa; q < qb; ++q) {
      all.clear();
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (c * Q + q) * k;
        for (int64_t j = 0; j < part_n[c * Q + q]; ++j) all.emplace_back(part_d[off + j], part_i[off + j]);
      }
      std::partial_sort(all.begin(), all.begin() + k, all.end());
      for (int64_t j = 0; j < k; ++j) {
        out_d[q * k + j] = all[j].first;
        out_i[q * k + j] = all[j].second;
      }
    }
  });
  return {dist, idx};
}

std::tuple<Tensor, Tensor> hamming_topk_cpu(const Tensor& queries, const Tensor& database, int64_t k) {
  check_query_database(queries, database, "hamming_topk");
  check_topk_k(k, database.size(0));
  return topk_search(queries, database, database.size(0) == 0 ? 0 : k, nullptr);
}

std::tuple<Tensor, Tensor> hamming_topk_filtered_cpu(const Tensor& queries, const Tensor& database,
                                                             int64_t k, const Tensor& allow) {
  check_query_database(queries, database, "hamming_topk_filtered");
  const int64_t allowed = check_allow(allow, database.size(0), "hamming_topk_filtered");
  STD_TORCH_CHECK(k >= 1, "hamming_topk_filtered: expected k >= 1, got ", k);
  const Tensor bitmap = as_contiguous(allow);
  return topk_search(queries, database, std::min(k, allowed), bitmap.const_data_ptr<uint8_t>());
}

// Radius search runs in two phases. The scan logs every match of a task in one HitLog, in batches
// of queries; the batch's log segment holds its matches tile by tile, each query's in increasing
// index order. Once the counts give lims, each batch is ordered by a stable counting sort on
// (query, distance) straight into the outputs. A batch has at most kRadiusBuckets (query,
// distance) buckets, so the positions and the bucket write fronts stay in cache.
constexpr int64_t kRadiusBuckets = 1 << 13;

// The radius search of hamming_radius and hamming_radius_filtered (allow: nullptr or a bitmap).
std::tuple<Tensor, Tensor, Tensor> radius_search(const Tensor& queries, const Tensor& database,
                                                             int64_t radius, const uint8_t* allow) {
  const int64_t Q = queries.size(0), N = database.size(0);
  Tensor lims = zeros_like_device({Q + 1}, ScalarType::Long, queries);
  if (Q == 0 || N == 0) {
    return {lims, empty_like_device({0}, ScalarType::Int, queries), empty_like_device({0}, ScalarType::Long, queries)};
  }
  const Prepared pr(queries, database);
  const int64_t max_distance = 8 * queries.size(1);
  const int32_t limit = static_cast<int32_t>(std::min(radius, max_distance) + 1);
  const int64_t batch = std::max<int64_t>(kQueryBlock, kRadiusBuckets / limit / kQueryBlock * kQueryBlock);
  const Split split = choose_split(Q, N);
  const int64_t C = split.by_database ? split.tasks : 1;
  // A task scans queries [q_begin(t), q_end(t)) against database chunk t (by_database) or all of it.
  auto q_begin = [&](int64_t t) { return split.by_database ? 0 : range_start(Q, split.tasks, t); };
  auto q_end = [&](int64_t t) { return split.by_database ? Q : range_start(Q, split.tasks, t + 1); };

  std::vector<HitLog> logs(static_cast<size_t>(split.tasks));
  // ends[t][b]: the end of batch b in task t's log.
  std::vector<std::vector<int64_t>> ends(static_cast<size_t>(split.tasks));
  // counts[c * Q + q]: query q's matches in database chunk c.
  std::vector<int64_t> counts(static_cast<size_t>(C * Q), 0);
  torch::stable::parallel_for(0, split.tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = split.by_database ? range_start(N, C, t) : 0;
      const int64_t n1 = split.by_database ? range_start(N, C, t + 1) : N;
      RadiusSink sink{&logs[t], counts.data() + (split.by_database ? t * Q : 0), 0, limit, allow};
      for (int64_t b0 = q_begin(t); b0 < q_end(t); b0 += batch) {
        sink.first_query = b0;
        scan_range(pr.problem, b0, std::min(q_end(t), b0 + batch), n0, n1, sink);
        ends[t].push_back(logs[t].size());
      }
    }
  });
  int64_t* lp = lims.mutable_data_ptr<int64_t>();
  for (int64_t q = 0; q < Q; ++q) {
    int64_t count = 0;
    for (int64_t c = 0; c < C; ++c) count += counts[c * Q + q];
    lp[q + 1] = lp[q] + count;
  }
  Tensor dist = empty_like_device({lp[Q]}, ScalarType::Int, queries);
  Tensor idx = empty_like_device({lp[Q]}, ScalarType::Long, queries);
  int32_t* dp = dist.mutable_data_ptr<int32_t>();
  int64_t* ip = idx.mutable_data_ptr<int64_t>();

  // One work item per batch: the tasks that logged it (every chunk, in index order, when split by
  // database) and its index in their logs.
  struct Item {
    int64_t q0, q1, task0, task1, b;
  };
  std::vector<Item> items;
  for (int64_t t = 0; t < (split.by_database ? 1 : split.tasks); ++t) {
    for (int64_t b0 = q_begin(t), b = 0; b0 < q_end(t); b0 += batch, ++b) {
      items.push_back({b0, std::min(q_end(t), b0 + batch), split.by_database ? 0 : t,
                       split.by_database ? C : t + 1, b});
    }
  }
  // The counting sort is stable and the logs are read in index order, so each query's results
  // come out ordered by (distance, index).
  torch::stable::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> at_(static_cast<size_t>(batch * limit));
    for (int64_t i = i0; i < i1; ++i) {
      const Item& it = items[i];
      std::fill(at_.begin(), at_.end(), 0);
      for (int64_t t = it.task0; t < it.task1; ++t) {
        logs[t].for_each(it.b ? ends[t][it.b - 1] : 0, ends[t][it.b],
                         [&](const Hit& h) { ++at_[int64_t{h.query} * limit + h.dist]; });
      }
      for (int64_t q = it.q0, key = 0; q < it.q1; ++q) {
        int64_t pos = lp[q];
        for (int32_t d = 0; d < limit; ++d, ++key) {
          const int64_t n = at_[key];
          at_[key] = pos;
          pos += n;
        }
      }
      for (int64_t t = it.task0; t < it.task1; ++t) {
        logs[t].for_each(it.b ? ends[t][it.b - 1] : 0, ends[t][it.b], [&](const Hit& h) {
          const int64_t o = at_[int64_t{h.query} * limit + h.dist]++;
          dp[o] = h.dist;
          ip[o] = h.idx;
        });
      }
    }
  });
  return {lims, dist, idx};
}

std::tuple<Tensor, Tensor, Tensor> hamming_radius_cpu(const Tensor& queries,
                                                                  const Tensor& database, int64_t radius) {
  check_query_database(queries, database, "hamming_radius");
  check_radius(radius);
  return radius_search(queries, database, radius, nullptr);
}

std::tuple<Tensor, Tensor, Tensor> hamming_radius_filtered_cpu(const Tensor& queries,
                                                                           const Tensor& database, int64_t radius,
                                                                           const Tensor& allow) {
  check_query_database(queries, database, "hamming_radius_filtered");
  check_allow(allow, database.size(0), "hamming_radius_filtered");
  STD_TORCH_CHECK(radius >= 0, "hamming_radius_filtered: expected radius >= 0, got ", radius);
  const Tensor bitmap = as_contiguous(allow);
  return radius_search(queries, database, radius, bitmap.const_data_ptr<uint8_t>());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU, m) {
  m.impl("hamming_distance", TORCH_BOX(&hamming_distance_cpu));
  m.impl("hamming_topk", TORCH_BOX(&hamming_topk_cpu));
  m.impl("hamming_radius", TORCH_BOX(&hamming_radius_cpu));
  m.impl("hamming_topk_filtered", TORCH_BOX(&hamming_topk_filtered_cpu));
  m.impl("hamming_radius_filtered", TORCH_BOX(&hamming_radius_filtered_cpu));
}

}  // namespace cibhash
