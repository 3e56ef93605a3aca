// Bit-exact math shared by the CPU and CUDA stochastic binarization kernels: the Philox4x32-10
// counter-based generator and a float32 sigmoid built from correctly rounded + - * / only, so both
// devices (and the pure-PyTorch reference in cibhash_ext/_reference.py) produce the same bits.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CIBHASH_HD __host__ __device__ __forceinline__
#else
#define CIBHASH_HD inline
#endif

namespace cibhash {

// Single rounded operations. On the device nvcc would otherwise fuse a*b+c into an FMA, which
// rounds once instead of twice and changes the last bit; the host build uses -ffp-contract=off.
CIBHASH_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
CIBHASH_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
CIBHASH_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
CIBHASH_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

CIBHASH_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// exp(x) for x <= 0 (Cephes expf: range reduction by ln 2 in two parts, degree-6 polynomial),
// within 2 ulp of the true value. Inputs below -87 give 0 (e^-87 is already 1.6e-38).
CIBHASH_HD float exp_nonpositive(float x) {
  if (x < -87.0f) return 0.0f;
  const float n = floorf(add_rn(mul_rn(x, 1.44269504088896341f), 0.5f));
  float r = sub_rn(x, mul_rn(n, 0.693359375f));
  r = sub_rn(r, mul_rn(n, -2.12194440e-4f));
  float y = 1.9875691500e-4f;
  y = add_rn(mul_rn(y, r), 1.3981999507e-3f);
  y = add_rn(mul_rn(y, r), 8.3334519073e-3f);
  y = add_rn(mul_rn(y, r), 4.1665795894e-2f);
  y = add_rn(mul_rn(y, r), 1.6666665459e-1f);
  y = add_rn(mul_rn(y, r), 5.0000001201e-1f);
  y = add_rn(add_rn(mul_rn(y, mul_rn(r, r)), r), 1.0f);
  // n is in [-126, 0] here, so 2^n is a normal float built from its exponent bits.
  return mul_rn(y, bits_to_float(static_cast<uint32_t>(static_cast<int>(n) + 127) << 23));
}

// sigmoid(z) = 1 / (1 + e^-z), evaluated as 1/(1+t) or t/(1+t) with t = e^-|z| so it never
// overflows. NaN in gives NaN out.
CIBHASH_HD float sigmoid_exact(float z) {
  if (z != z) return z;
  const float t = exp_nonpositive(z >= 0.0f ? -z : z);
  const float d = add_rn(1.0f, t);
  return z >= 0.0f ? div_rn(1.0f, d) : div_rn(t, d);
}

// Philox4x32-10 (Salmon et al., SC 2011), the generator of cuRAND and Random123.
struct Philox4 {
  uint32_t v[4];
};

CIBHASH_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

CIBHASH_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four uniforms for elements 4g .. 4g+3 of a call keyed by (seed, offset): counter
// (g, offset), key seed. A uniform is the top 24 bits of a word times 2^-24, exactly in [0, 1).
CIBHASH_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t g) {
  return philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

CIBHASH_HD float word_to_uniform(uint32_t w) {
  return static_cast<float>(w >> 8) * 5.9604644775390625e-8f;  // 2^-24
}

// The code bit for one logit: stochastic 1[u < sigmoid(z)], deterministic 1[z > 0]. NaN gives 0.
CIBHASH_HD bool binarize_bit(float z, bool stochastic, float u) {
  return stochastic ? (u < sigmoid_exact(z)) : (z > 0.0f);
}

// Straight-through gradient of the paper: d code / d logit := p (1 - p), p = sigmoid(z). With
// t = e^-|z| and d = 1 + t, p and 1 - p are 1/d and t/d in some order, so p (1 - p) is evaluated
// as (1/d)(t/d): no cancellation in 1 - p, a few ulp of relative error for every z. NaN in, NaN out.
CIBHASH_HD float binarize_grad(float grad, float z) {
  if (z != z) return z;
  const float t = exp_nonpositive(z >= 0.0f ? -z : z);
  const float d = add_rn(1.0f, t);
  return mul_rn(grad, mul_rn(div_rn(1.0f, d), div_rn(t, d)));
}

}  // namespace cibhash
