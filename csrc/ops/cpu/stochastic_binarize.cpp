// CPU kernels of the stochastic binary layer: forward (Philox uniforms drawn inside the kernel,
// no noise tensor) and the fused straight-through backward grad * p * (1 - p).
#include <immintrin.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cstring>
#include <type_traits>

#include "ops/binarize_math.h"
#include "ops/cpu/isa.h"
#include "ops/stochastic_binarize.h"

namespace cibhash {
namespace {

bool has_avx512() { return active_isa() == Isa::kAvx512; }

// Scalar path: groups [g0, g1) of 4 elements; element i takes word i % 4 of Philox block i / 4.
template <typename T>
void binarize_groups_scalar(const T* z, T* out, int64_t g0, int64_t g1, int64_t n, bool stochastic, uint64_t seed,
                            uint64_t offset) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t first = g * 4;
    const int64_t count = std::min<int64_t>(4, n - first);
    Philox4 words{{0, 0, 0, 0}};
    if (stochastic) words = philox_block(seed, offset, static_cast<uint64_t>(g));
    for (int64_t l = 0; l < count; ++l) {
      const float u = word_to_uniform(words.v[l]);
      out[first + l] = binarize_bit(static_cast<float>(z[first + l]), stochastic, u) ? T(1) : T(0);
    }
  }
}

// ---- AVX-512: the same arithmetic on 16 lanes. Every step is a correctly rounded IEEE operation
// (or exact integer work), so each lane equals the scalar result bit for bit. ----

// (hi, lo) 32-bit halves of a * m for 16 unsigned 32-bit lanes: VPMULUDQ multiplies the even
// lanes into 64-bit products; the odd lanes are shifted down, multiplied, and blended back.
__attribute__((target("avx512f"))) inline void mulhilo_avx512(__m512i a, uint32_t m, __m512i& hi, __m512i& lo) {
  const __m512i mv = _mm512_set1_epi64(m);
  const __m512i even = _mm512_mul_epu32(a, mv);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mv);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// Philox4x32-10 for the 16 blocks g .. g+15, returned in element order: out[v] holds the words of
// elements 16v .. 16v+15 of the 64 (element 4b + l is word l of block g + b).
__attribute__((target("avx512f"))) inline void philox16_avx512(uint64_t seed, uint64_t offset, uint64_t g,
                                                               __m512i out[4]) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i base_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g)));
  __m512i c0 = _mm512_add_epi32(base_lo, lane);
  // The high counter word carries where the low word wrapped.
  __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g >> 32))),
                                     _mm512_cmplt_epu32_mask(c0, base_lo),
                                     _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(g >> 32))),
                                     _mm512_set1_epi32(1));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    __m512i hi0, lo0, hi1, lo1;
    mulhilo_avx512(c0, 0xD2511F53u, hi0, lo0);
    mulhilo_avx512(c2, 0xCD9E8D57u, hi1, lo1);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
  }
  // c_l[b] is word l of block b; interleave to element order. Within each 128-bit lane i the
  // unpacks give u_j = the 4 words of block 4i + j; a 4x4 transpose of 128-bit lanes then gathers
  // blocks 4v .. 4v+3 into out[v].
  const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i a0 = _mm512_shuffle_i64x2(u0, u1, 0x44), a1 = _mm512_shuffle_i64x2(u0, u1, 0xEE);
  const __m512i a2 = _mm512_shuffle_i64x2(u2, u3, 0x44), a3 = _mm512_shuffle_i64x2(u2, u3, 0xEE);
  out[0] = _mm512_shuffle_i64x2(a0, a2, 0x88);
  out[1] = _mm512_shuffle_i64x2(a0, a2, 0xDD);
  out[2] = _mm512_shuffle_i64x2(a1, a3, 0x88);
  out[3] = _mm512_shuffle_i64x2(a1, a3, 0xDD);
}

// exp_nonpositive(-|z|) of binarize_math.h on 16 lanes (the same operations in the same order);
// also returns which lanes have z >= 0.
__attribute__((target("avx512f"))) inline __m512 exp_neg_abs_avx512(__m512 z, __mmask16& nonneg) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  nonneg = _mm512_cmp_ps_mask(z, zero, _CMP_GE_OQ);
  const __m512 x = _mm512_mask_sub_ps(z, nonneg, zero, z);  // z >= 0 ? -z : z
  const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                                      _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(y, _mm512_mul_ps(r, r)), r), one);
  const __m512i exponent = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(underflow, _mm512_mul_ps(y, _mm512_castsi512_ps(exponent)), zero);
}

// sigmoid_exact of binarize_math.h on 16 lanes.
__attribute__((target("avx512f"))) inline __m512 sigmoid_exact_avx512(__m512 z) {
  __mmask16 nonneg;
  const __m512 t = exp_neg_abs_avx512(z, nonneg);
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), t);
  const __m512 p = _mm512_div_ps(_mm512_mask_blend_ps(nonneg, t, _mm512_set1_ps(1.0f)), d);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q), p, z);
}

// 16 logits as float32, and 16 {0, 1} results stored in the logits' dtype.
template <typename T>
__attribute__((target("avx512f"))) inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, torch::headeronly::Half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {  // bfloat16 is the top half of a float32
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

template <typename T>
__attribute__((target("avx512f"))) inline void store_bits16(T* p, __mmask16 bits) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_storeu_ps(p, _mm512_maskz_mov_ps(bits, _mm512_set1_ps(1.0f)));
  } else {
    // 1.0 is 0x3C00 in float16 and 0x3F80 in bfloat16; 0.0 is all zeros in both.
    const int one = std::is_same_v<T, torch::headeronly::Half> ? 0x3C00 : 0x3F80;
    const __m512i v = _mm512_maskz_mov_epi32(bits, _mm512_set1_epi32(one));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
  }
}

// Groups [g0, g1): 16 Philox blocks = 64 elements per step, the tail on the scalar path.
template <typename T>
__attribute__((target("avx512f"))) void binarize_groups_avx512(const T* z, T* out, int64_t g0, int64_t g1, int64_t n,
                                                               bool stochastic, uint64_t seed, uint64_t offset) {
  int64_t g = g0;
  __m512i words[4];
  for (; g + 16 <= g1 && (g + 16) * 4 <= n; g += 16) {
    const int64_t first = g * 4;
    if (stochastic) philox16_avx512(seed, offset, static_cast<uint64_t>(g), words);
    for (int v = 0; v < 4; ++v) {
      const __m512 zv = load16(z + first + 16 * v);
      __mmask16 bits;
      if (stochastic) {
        const __m512i w = words[v];
        const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 8)), _mm512_set1_ps(5.9604644775390625e-8f));
        bits = _mm512_cmp_ps_mask(u, sigmoid_exact_avx512(zv), _CMP_LT_OQ);
      } else {
        bits = _mm512_cmp_ps_mask(zv, _mm512_setzero_ps(), _CMP_GT_OQ);
      }
      store_bits16(out + first + 16 * v, bits);
    }
  }
  binarize_groups_scalar(z, out, g, g1, n, stochastic, seed, offset);
}

// Work is split in Philox blocks of 4 consecutive elements: one generator call feeds 4 bits, and
// element i always takes word i % 4 of block i / 4, whatever the thread split.
template <typename T>
void binarize_forward(const T* z, T* out, int64_t n, bool stochastic, uint64_t seed, uint64_t offset) {
  const int64_t blocks = (n + 3) / 4;
  const bool simd = has_avx512();
  torch::stable::parallel_for(0, blocks, 2048, [&](int64_t g0, int64_t g1) {
    if (simd) {
      binarize_groups_avx512(z, out, g0, g1, n, stochastic, seed, offset);
    } else {
      binarize_groups_scalar(z, out, g0, g1, n, stochastic, seed, offset);
    }
  });
}

// binarize_grad on 16 float32 lanes: grad * ((1/d) * (t/d)), its operations in its order.
__attribute__((target("avx512f"))) void binarize_grad_avx512(const float* g, const float* z, float* out, int64_t i0,
                                                             int64_t i1) {
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const __m512 zv = _mm512_loadu_ps(z + i);
    __mmask16 nonneg;
    const __m512 t = exp_neg_abs_avx512(zv, nonneg);
    const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), t);
    const __m512 pq = _mm512_mul_ps(_mm512_div_ps(_mm512_set1_ps(1.0f), d), _mm512_div_ps(t, d));
    const __m512 grad = _mm512_mul_ps(_mm512_loadu_ps(g + i), pq);
    _mm512_storeu_ps(out + i, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(zv, zv, _CMP_UNORD_Q), grad, zv));
  }
  for (; i < i1; ++i) out[i] = binarize_grad(g[i], z[i]);
}

template <typename T>
void binarize_grad_range(const T* g, const T* z, T* out, int64_t i0, int64_t i1) {
  if constexpr (std::is_same_v<T, float>) {
    if (has_avx512()) return binarize_grad_avx512(g, z, out, i0, i1);
  }
  for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<T>(binarize_grad(static_cast<float>(g[i]), static_cast<float>(z[i])));
}

Tensor stochastic_binarize_forward_cpu(const Tensor& logits, bool stochastic, int64_t seed, int64_t offset) {
  check_binarize_logits(logits, "stochastic_binarize_forward");
  const Tensor z = as_contiguous(logits);
  Tensor out = torch::stable::empty_like(z);
  if (z.numel() == 0) return out;
  THO_DISPATCH_V2(z.scalar_type(), "stochastic_binarize_forward_cpu", AT_WRAP([&] {
    binarize_forward<scalar_t>(z.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), z.numel(), stochastic,
                               static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  }), ScalarType::Float, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

Tensor stochastic_binarize_backward_cpu(const Tensor& grad_codes, const Tensor& logits) {
  check_binarize_backward(grad_codes, logits);
  const Tensor z = as_contiguous(logits);
  const Tensor g = as_contiguous(grad_codes);
  Tensor out = torch::stable::empty_like(z);
  if (z.numel() == 0) return out;
  THO_DISPATCH_V2(z.scalar_type(), "stochastic_binarize_backward_cpu", AT_WRAP([&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, z.numel(), 8192, [&](int64_t i0, int64_t i1) { binarize_grad_range(gp, zp, op, i0, i1); });
  }), ScalarType::Float, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cibhash_ext, CPU, m) {
  m.impl("stochastic_binarize_forward", TORCH_BOX(&stochastic_binarize_forward_cpu));
  m.impl("stochastic_binarize_backward", TORCH_BOX(&stochastic_binarize_backward_cpu));
}

}  // namespace cibhash
