// The SIMD instruction set the CPU kernels use, chosen once per process at run time (the build
// machine may not be the run machine, so nothing is compiled with -march=native).
#pragma once
#include <cstdlib>
#include <cstring>

namespace cibhash {

enum class Isa { kScalar, kAvx2, kAvx512 };

// AVX-512 here means AVX512F + VPOPCNTDQ (Ice Lake, Zen 4 and later). CIBHASH_ISA=scalar|avx2
// lowers the choice, so tests can check every path on one machine.
inline Isa active_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::kScalar;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) {
      best = Isa::kAvx512;
    } else if (__builtin_cpu_supports("avx2")) {
      best = Isa::kAvx2;
    }
    const char* forced = std::getenv("CIBHASH_ISA");
    if (forced && std::strcmp(forced, "scalar") == 0) return Isa::kScalar;
    if (forced && std::strcmp(forced, "avx2") == 0 && best != Isa::kScalar) return Isa::kAvx2;
    return best;
  }();
  return isa;
}

}  // namespace cibhash
