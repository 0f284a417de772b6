// Philox4x32-10 and the "four normals per call" Box-Muller mapping of docs/randomness.md.
//
//   key     = (seed mod 2^32, seed div 2^32)
//   counter = (q mod 2^32, q div 2^32, (offset + s) mod 2^32, (offset + s) div 2^32)
//   for sample s of element n (row-major index in mean), quad q = n div 4, lane = n mod 4;
//   a(w) = ((w >> 8) + 1) / 2^24 in (0, 1],  b(w) = (w >> 8) / 2^24 in [0, 1)
//   lane 0: sqrt(-2 ln a(w0)) cos(2 pi b(w1))   lane 1: ... sin(2 pi b(w1))
//   lane 2: sqrt(-2 ln a(w2)) cos(2 pi b(w3))   lane 3: ... sin(2 pi b(w3))
//
// Host and device; the raw words are bit-identical on every backend.
#pragma once

#include "common.h"
#include "fastmath.h"

namespace adt_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

struct PhiloxKey {
  uint32_t k0, k1;
};

ADT_FN PhiloxKey philox_key(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

ADT_FN void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                         uint32_t k1) {
#if ADT_FAST_DEVICE_MATH()
  const uint32_t hi0 = __umulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
  const uint32_t hi1 = __umulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
#else
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
#endif
  const uint32_t n0 = hi1 ^ c1 ^ k0;
  const uint32_t n2 = hi0 ^ c3 ^ k1;
  c0 = n0;
  c1 = lo1;
  c2 = n2;
  c3 = lo0;
}

// Philox4x32-10 in place on the counter (c0, c1, c2, c3) with key (k0, k1).
ADT_FN void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                          uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four words of quad q, sample s: counter (q, offset + s) as two 64-bit halves.
ADT_FN void philox_words4(PhiloxKey key, uint64_t q, uint64_t offset_plus_s, uint32_t& w0,
                          uint32_t& w1, uint32_t& w2, uint32_t& w3) {
  w0 = static_cast<uint32_t>(q);
  w1 = static_cast<uint32_t>(q >> 32);
  w2 = static_cast<uint32_t>(offset_plus_s);
  w3 = static_cast<uint32_t>(offset_plus_s >> 32);
  philox4x32_10(w0, w1, w2, w3, key.k0, key.k1);
}

// a(w) in (0, 1] and b(w) in [0, 1): 24-bit uniforms, exact in float and double.
template <class T>
ADT_FN T uniform_open0(uint32_t w) {
  return static_cast<T>(static_cast<int32_t>((w >> 8) + 1u)) * static_cast<T>(5.9604644775390625e-08);
}

template <class T>
ADT_FN T uniform_closed1(uint32_t w) {
  return static_cast<T>(static_cast<int32_t>(w >> 8)) * static_cast<T>(5.9604644775390625e-08);
}

// sin(2 pi b(w)) and cos(2 pi b(w)). The device float path takes the angle from the signed word,
// 2 pi ((int32) w >> 8) 2^-24 in [-pi, pi): the same angle as 2 pi b(w) up to a whole turn, in the
// range where sin.approx/cos.approx hold their documented bound (docs/kernels.md).
template <class T>
ADT_FN void sincos_2pi_word(uint32_t w, T& s, T& c) {
  math::sincos_2pi<T>(uniform_closed1<T>(w), s, c);
}

#if ADT_FAST_DEVICE_MATH()
template <>
__device__ __forceinline__ void sincos_2pi_word<float>(uint32_t w, float& s, float& c) {
  const float angle = static_cast<float>(static_cast<int32_t>(w) >> 8) * 3.7450702e-07f;  // 2 pi / 2^24
  __sincosf(angle, &s, &c);
}

template <>
__device__ __forceinline__ void sincos_2pi_word<double>(uint32_t w, double& s, double& c) {
  sincospi(2.0 * uniform_closed1<double>(w), &s, &c);
}
#endif

// Two normals from a pair of words: (sqrt(-2 ln a(wa)) cos(2 pi b(wb)), ... sin(2 pi b(wb))).
template <class T>
ADT_FN void box_muller(uint32_t wa, uint32_t wb, T& z_cos, T& z_sin) {
  const T radius = math::sqrt_fast(math::neg2_log_uniform(uniform_open0<T>(wa)));
  T s, c;
  sincos_2pi_word<T>(wb, s, c);
  z_cos = radius * c;
  z_sin = radius * s;
}

// The standard normal r[s, n] of docs/randomness.md, one at a time (tests, scalar code).
template <class T>
ADT_FN T philox_normal(uint64_t seed, uint64_t offset, uint64_t n, int64_t s) {
  uint32_t w[4];
  philox_words4(philox_key(seed), n / kElementsPerCall, offset + static_cast<uint64_t>(s), w[0], w[1], w[2],
                w[3]);
  const int lane = static_cast<int>(n % kElementsPerCall);
  T zc, zs;
  box_muller<T>(w[lane < 2 ? 0 : 2], w[lane < 2 ? 1 : 3], zc, zs);
  return (lane & 1) ? zs : zc;
}

}  // namespace adt_fast
