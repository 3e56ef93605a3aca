/* The machine's streaming read bandwidth: every 64-bit word of a buffer summed with AVX-512 loads,
 * the buffer split over THREADS OpenMP threads; the best of 30 passes. A scan of N codes of B bytes
 * cannot beat N * B bytes at this rate: benchmarks/bench_latency.py builds and runs this for the size
 * of each database it times. Stand-alone: gcc -O3 -fopenmp read_bandwidth.c && ./a.out BYTES THREADS */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

__attribute__((target("avx512f"))) static uint64_t sum(const uint64_t* a, size_t n) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm512_add_epi64(acc0, _mm512_loadu_si512(a + i));
    acc1 = _mm512_add_epi64(acc1, _mm512_loadu_si512(a + i + 8));
  }
  uint64_t s = _mm512_reduce_add_epi64(_mm512_add_epi64(acc0, acc1));
  for (; i < n; ++i) s += a[i];
  return s;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s BYTES THREADS\n", argv[0]);
    return 2;
  }
  const size_t n = (size_t)atof(argv[1]) / 8;
  const int threads = atoi(argv[2]);
  uint64_t* a = aligned_alloc(64, (n * 8 + 63) / 64 * 64);
  if (a == NULL) return 1;
  for (size_t i = 0; i < n; ++i) a[i] = i * 2654435761u;
  omp_set_num_threads(threads);
  double best = 1e30;
  volatile uint64_t keep = 0;
  for (int pass = 0; pass < 30; ++pass) {
    const double t0 = now();
    uint64_t s = 0;
#pragma omp parallel reduction(+ : s)
    {
      const size_t t = (size_t)omp_get_thread_num(), T = (size_t)omp_get_num_threads();
      s += sum(a + n * t / T, n * (t + 1) / T - n * t / T);
    }
    const double dt = now() - t0;
    keep += s;
    if (dt < best) best = dt;
  }
  printf("%.3f GB/s reading %zu bytes with %d threads (best of 30 passes: %.3f ms)\n", n * 8 / best / 1e9, n * 8,
         threads, best * 1e3);
  free(a);
  return 0;
}
