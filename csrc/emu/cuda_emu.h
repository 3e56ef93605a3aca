// A CUDA emulation for the CPU: enough of the runtime, the intrinsics and the launch syntax (through
// CIBHASH_LAUNCH, ops/cuda/launch.cuh) to compile the unchanged ops/cuda/*_kernel.cu files with g++
// and run them. The scheduler (cuda_emu.cpp) runs every CUDA thread of a block as a fiber, blocks in
// sequence, and fails loudly wherever CUDA's behaviour is undefined; driver.cpp runs the launchers.
#pragma once
#include <math.h>  // CUDA's device code sees the C math functions (floorf) unqualified

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------------------------------------
// Types and runtime API, as cuda_runtime.h spells them.
// ------------------------------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
// CUDA's vector types carry their size as alignment; a misaligned __ldg of one fails (see __ldg).
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct CUstream_st*;

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetLastError();

namespace cuda_emu {
cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value);
}
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return ::cuda_emu::set_func_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ------------------------------------------------------------------------------------------------
// Keywords. Shared memory is static storage: blocks run one after another, so one copy serves them
// all (dynamic shared memory is a fresh, poisoned allocation per block instead).
// ------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

namespace cuda_emu {

// ------------------------------------------------------------------------------------------------
// The scheduler's interface (cuda_emu.cpp).
// ------------------------------------------------------------------------------------------------
struct Site {
  const char* file;
  int line;
};

enum class Op : int { kSyncthreads, kSyncwarp, kBallot, kShfl, kShflUp, kShflDown, kShflXor, kMatchAny };

// The indices of the running CUDA thread.
struct ThreadIndex {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
const ThreadIndex& self();

void syncthreads(Site site);
// A rendezvous of the lanes in `mask`; returns the op's result for the calling lane (see cuda_emu.cpp).
uint64_t warp_op(Op op, Site site, unsigned mask, uint64_t value, int arg, int width);
void* dynamic_shared_base();
// Fails unless p is aligned to `alignment` (the load's size), and counts the load by its size.
void check_aligned(const void* p, size_t alignment, const char* what, Site site);
// __ldg loads so far by size (1, 2, 4, 8, 16 bytes), to show which load path a launch took.
uint64_t (&loads_by_size())[5];

// What the caller is running, named in every error message.
void set_context(const std::string& what);

// Settable device attributes, so a test can force each launch plan of a kernel.
void set_device_attribute(cudaDeviceAttr attr, int value);

// Runs body(ctx) for every thread of every block; returns the launch error (also the "last error").
cudaError_t launch_kernel(const void* kernel, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx);

// CIBHASH_LAUNCH(grid, block, smem, stream, kernel)(args...): converts the arguments to the
// kernel's parameter types once, as a launch does, and hands every thread the same copies.
template <class... P>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(P...))
      : grid_(grid), block_(block), smem_(smem), kernel_(kernel) {}
  template <class... A>
  void operator()(A&&... args) const {
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    launch_kernel(reinterpret_cast<const void*>(kernel_), grid_, block_, smem_,
                  [](void* c) {
                    auto* x = static_cast<Ctx*>(c);
                    std::apply(x->kernel, x->params);
                  },
                  &ctx);
  }

 private:
  dim3 grid_, block_;
  size_t smem_;
  void (*kernel_)(P...);
};

template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <class T>
T shfl(Op op, Site site, unsigned mask, T v, int arg, int width) {
  return from_bits<T>(warp_op(op, site, mask, to_bits(v), arg, width));
}

template <class T>
T ldg(const T* p, Site site) {
  check_aligned(p, sizeof(T), "__ldg", site);
  return *p;
}

}  // namespace cuda_emu

// ------------------------------------------------------------------------------------------------
// Built-in variables and intrinsics. The synchronising ones are macros so that each call knows its
// source line: lanes meeting at different lines are an error, and a deadlock dump names the lines.
// ------------------------------------------------------------------------------------------------
#define CUDA_EMU_SITE (::cuda_emu::Site{__FILE__, __LINE__})
#define threadIdx (::cuda_emu::self().thread)
#define blockIdx (::cuda_emu::self().block)
#define blockDim (::cuda_emu::self().block_dim)
#define gridDim (::cuda_emu::self().grid_dim)

#define __syncthreads() ::cuda_emu::syncthreads(CUDA_EMU_SITE)
#define __syncwarp(...) ::cuda_emu::syncwarp(CUDA_EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::cuda_emu::warp_op(::cuda_emu::Op::kBallot, CUDA_EMU_SITE, mask, (pred) ? 1 : 0, 0, 32))
#define __match_any_sync(mask, v) \
  static_cast<unsigned>(::cuda_emu::warp_op(::cuda_emu::Op::kMatchAny, CUDA_EMU_SITE, mask, ::cuda_emu::to_bits(v), 0, 32))
#define __shfl_sync(mask, v, ...) ::cuda_emu::shfl_at(::cuda_emu::Op::kShfl, CUDA_EMU_SITE, mask, v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) ::cuda_emu::shfl_at(::cuda_emu::Op::kShflUp, CUDA_EMU_SITE, mask, v, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
  ::cuda_emu::shfl_at(::cuda_emu::Op::kShflDown, CUDA_EMU_SITE, mask, v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) ::cuda_emu::shfl_at(::cuda_emu::Op::kShflXor, CUDA_EMU_SITE, mask, v, __VA_ARGS__)
#define __ldg(p) ::cuda_emu::ldg(p, CUDA_EMU_SITE)

namespace cuda_emu {
inline void syncwarp(Site site, unsigned mask = 0xffffffffu) { warp_op(Op::kSyncwarp, site, mask, 0, 0, 32); }
template <class T>
T shfl_at(Op op, Site site, unsigned mask, T v, int arg, int width = 32) {
  return shfl(op, site, mask, v, arg, width);
}
}  // namespace cuda_emu

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// CUDA's atomics are relaxed; as GCC atomics a ThreadSanitizer build sees them as atomic, not racy.
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

// The device min/max overloads, for any pair of arithmetic types (usual conversions).
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

// ------------------------------------------------------------------------------------------------
// cuda_fp16.h / cuda_bf16.h: storage types and the conversions the kernels use, rounding as the
// hardware does (to nearest even; NaN becomes the canonical 0x7FFF).
// ------------------------------------------------------------------------------------------------
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu, f;
  if (exp == 0x1f) {
    f = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    f = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    f = sign;
  } else {  // subnormal: normalise
    int e = 113;
    while (!(man & 0x400u)) {
      man <<= 1;
      --e;
    }
    f = sign | (static_cast<uint32_t>(e) << 23) | ((man & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

inline __half __float2half_rn(float v) {
  uint32_t f;
  std::memcpy(&f, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t abs = f & 0x7fffffffu;
  if (abs > 0x7f800000u) return {0x7fff};
  if (abs >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to infinity
  if (abs < 0x38800000u) {  // half subnormal or zero: scale so the rounding is an integer rounding
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 + (113 - exp)
    if (shift > 24) return {sign};
    const uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return {static_cast<uint16_t>(sign | q)};
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15, still with 23 mantissa bits
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return {static_cast<uint16_t>(sign | r)};
}

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t f = static_cast<uint32_t>(h.bits) << 16;
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t f;
  std::memcpy(&f, &v, 4);
  if ((f & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
  f += 0x7fffu + ((f >> 16) & 1u);
  return {static_cast<uint16_t>(f >> 16)};
}
