/* The machine's XOR + popcount limit: Hamming distances between codes held in L1, with AVX-512
 * VPOPCNTQ on 64-bit lanes (8 codes per instruction) or VPOPCNTD on 32-bit lanes (16 codes: the
 * lanes of codes of up to 32 bits), 8 queries per loaded vector, a running sum per query so that no
 * work is optimised away. Prints code pairs per second. Built and run by
 * benchmarks/bench_hamming.py; stand-alone: gcc -O3 -fopenmp popcount_limit.c && ./a.out THREADS [64|32] */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CODES 4096 /* 32 KiB: stays in L1 */
#define QUERIES 8
#define REPEATS 20000

__attribute__((target("avx512f,avx512vpopcntdq"))) static uint64_t run(const uint64_t* db, const uint64_t* q) {
  __m512i best[QUERIES];
  for (int r = 0; r < QUERIES; ++r) best[r] = _mm512_set1_epi64(1 << 20);
  for (int rep = 0; rep < REPEATS; ++rep) {
    for (int j = 0; j < CODES; j += 8) {
      const __m512i v = _mm512_loadu_si512(db + j);
      for (int r = 0; r < QUERIES; ++r) {
        const __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(v, _mm512_set1_epi64((long long)q[r])));
        best[r] = _mm512_add_epi64(best[r], d);
      }
    }
    __asm__ volatile("" ::: "memory");
  }
  uint64_t sum = 0;
  for (int r = 0; r < QUERIES; ++r) sum += _mm512_reduce_add_epi64(best[r]);
  return sum;
}

/* The same over 32-bit lanes: the 4096 words hold 8192 codes of 32 bits. */
__attribute__((target("avx512f,avx512vpopcntdq"))) static uint64_t run32(const uint64_t* db, const uint64_t* q) {
  __m512i best[QUERIES];
  for (int r = 0; r < QUERIES; ++r) best[r] = _mm512_setzero_si512();
  for (int rep = 0; rep < REPEATS; ++rep) {
    for (int j = 0; j < CODES; j += 8) {
      const __m512i v = _mm512_loadu_si512(db + j);
      for (int r = 0; r < QUERIES; ++r) {
        const __m512i d = _mm512_popcnt_epi32(_mm512_xor_si512(v, _mm512_set1_epi32((int)q[r])));
        best[r] = _mm512_add_epi32(best[r], d);
      }
    }
    __asm__ volatile("" ::: "memory");
  }
  uint64_t sum = 0;
  for (int r = 0; r < QUERIES; ++r) sum += (uint32_t)_mm512_reduce_add_epi32(best[r]);
  return sum;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1;
  const int lane_bits = argc > 2 ? atoi(argv[2]) : 64;
  if (lane_bits != 64 && lane_bits != 32) {
    printf("lane bits must be 64 or 32, got %d\n", lane_bits);
    return 2;
  }
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vpopcntdq")) {
    printf("no AVX-512 VPOPCNTDQ on this CPU\n");
    return 1;
  }
  omp_set_num_threads(threads);
  double seconds = 0;
  uint64_t checksum = 0;
#pragma omp parallel reduction(+ : checksum) reduction(max : seconds)
  {
    uint64_t* db = aligned_alloc(64, CODES * sizeof(uint64_t));
    uint64_t q[QUERIES];
    uint64_t x = 0x9E3779B97F4A7C15ull + (uint64_t)omp_get_thread_num();
    for (int j = 0; j < CODES; ++j) db[j] = x = x * 6364136223846793005ull + 1442695040888963407ull;
    for (int r = 0; r < QUERIES; ++r) q[r] = x = x * 6364136223846793005ull + 1442695040888963407ull;
#pragma omp barrier
    const double t0 = omp_get_wtime();
    checksum += lane_bits == 64 ? run(db, q) : run32(db, q);
    seconds = omp_get_wtime() - t0;
    free(db);
  }
  const double pairs = (double)CODES * (64 / lane_bits) * QUERIES * REPEATS * threads;
  printf("%d-bit lanes, threads %d: %.2f G pairs/s in total, %.2f G pairs/s per thread (checksum %llu)\n", lane_bits, threads,
         pairs / seconds / 1e9, pairs / seconds / 1e9 / threads, (unsigned long long)checksum);
  return 0;
}
