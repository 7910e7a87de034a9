// Shared by the CPU kernels: the clone attribute of their hot loops, and branch-free float32 exp, expm1
// and log that those loops can vectorise (std::exp and std::log are calls, one element at a time).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

// Hot loops are compiled for AVX-512 and AVX2+FMA as well, picked at load time (GCC on x86-64).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTFLOW_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FASTFLOW_INLINE inline __attribute__((always_inline))  // compiled into each clone of the caller
#else
#define FASTFLOW_VECTOR_CLONES
#define FASTFLOW_INLINE inline
#endif

namespace fastflow {

// e^r for |r| <= ln2 / 2: the Cephes expf polynomial (degree 6), within one float32 ulp.
FASTFLOW_INLINE float exp_reduced(float r) {
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  return r + r * r * q + 1.0f;
}

// n = round(x / ln2) (as a float holding an integer) and r = x - n ln2 in two parts (Cody-Waite), for
// |x| < 2^22 ln2.
FASTFLOW_INLINE float reduce_ln2(float x, float& r) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  return n;
}

// 2^n for an integer-valued n in [-126, 127], built from its exponent bits.
FASTFLOW_INLINE float pow2(float n) { return std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23); }

// e^x for every float32 x: +inf above 88.72 and 0 (through the subnormals) below -103.97, as the
// maths gives, and NaN for NaN (the clamps pass it through, and so does the polynomial). 2^n is
// applied in two halves so that neither leaves the normal range.
FASTFLOW_INLINE float exp_float(float x) {
  float r;
  const float n = reduce_ln2(std::min(std::max(x, -104.0f), 89.0f), r);
  const float half = static_cast<float>(static_cast<int32_t>(n) >> 1);
  return exp_reduced(r) * pow2(half) * pow2(n - half);
}

// e^x - 1 for x <= 0. Near 0 (x > -0.35) a degree-8 Taylor polynomial (truncation below 3e-10
// relative); below, e^x - 1 with e^x from exp_reduced, where e^x <= 0.71 leaves no cancellation to
// speak of. x is clamped at -87 (e^-87 = 1.6e-38, result -1).
FASTFLOW_INLINE float expm1_nonpositive(float x) {
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const float near_zero = x + x * x * p;
  float r;
  const float n = reduce_ln2(std::max(x, -87.0f), r);
  const float far = exp_reduced(r) * pow2(n) - 1.0f;
  return x > -0.35f ? near_zero : far;
}

// log x for a positive normal float32 x (0, subnormals, inf and NaN give wrong finite numbers: callers
// clamp or select them away): x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), then the Cephes logf polynomial in f = m - 1 (within one float32 ulp).
FASTFLOW_INLINE float log_normal(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f800000);  // in [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  e = high ? e + 1 : e;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = f * z * p + fe * -2.12194440e-4f - 0.5f * z;
  return f + y + fe * 0.693359375f;
}

}  // namespace fastflow
