/* The machine's XOR + popcount limit: Hamming distances between 64-bit codes held in L1, with
 * AVX-512 VPOPCNTQ (8 codes per instruction, 8 queries per loaded vector, a running sum per
 * query so that no work is optimised away). Prints code pairs per second per thread. Built and run
 * by benchmarks/bench_hamming.py; stand-alone: gcc -O3 -fopenmp popcount_limit.c && ./a.out 2 */
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

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1;
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
    checksum += run(db, q);
    seconds = omp_get_wtime() - t0;
    free(db);
  }
  const double pairs = (double)CODES * QUERIES * REPEATS * threads;
  printf("threads %d: %.2f G pairs/s in total, %.2f G pairs/s per thread (checksum %llu)\n", threads,
         pairs / seconds / 1e9, pairs / seconds / 1e9 / threads, (unsigned long long)checksum);
  return 0;
}
