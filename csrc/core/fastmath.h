// Branch-free exp / expm1 / log / log1p / sin-cos(2 pi b) for float and double.
//
// On the host these are plain C++ polynomials with no libm calls and no branches, so that g++ -O3
// vectorises the kernels' inner loops (libm calls would block it). On the device the CUDA math
// library is used where it is accurate and cheap (expf, logf, log1pf, sincospif), except for
// expm1_exp, whose one range reduction gives both exp(x) and expm1(x).
//
// Accuracy (host): a few ulp over the arguments the kernels use -- float ~1e-7, double ~2e-16
// relative -- far inside the tolerances of the tests (1e-5 float, 1e-12 double vs float64).
// Domains: exp/expm1 any x (underflow to 0 below -104 / -746, overflow to inf above 89 / 710);
// log for positive normal finite x; log1p for x >= 0; sincos_2pi for b in [0, 1).
#pragma once

#include "common.h"

#include <cmath>

namespace adt_fast {
namespace math {

template <class T>
struct Traits;

template <>
struct Traits<float> {
  using I = int32_t;
  using U = uint32_t;
  static constexpr int kMantBits = 23;
  static constexpr int kSignBit = 31;
  static constexpr I kBias = 127;
  static constexpr I kExpMask = 0xff;
  static constexpr I kMantMask = 0x7fffff;
  static constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: x + magic rounds x to an integer
  static constexpr float kIntMagic = 8388608.0f;     // 2^23
  static constexpr float kExpLowest = -104.0f;       // exp(x) rounds to 0 below this
  static constexpr float kExpHighest = 89.0f;        // exp(x) overflows above this
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kExpLn2Hi = 6.9314575195e-01f;  // fdlibm e_expf.c split of ln 2
  static constexpr float kExpLn2Lo = 1.4286067653e-06f;
  static constexpr float kLogLn2Hi = 6.9313812256e-01f;  // fdlibm e_logf.c split of ln 2
  static constexpr float kLogLn2Lo = 9.0580006145e-06f;
  static constexpr float kMinNormal = 1.17549435e-38f;
  static constexpr float kMaxFinite = 3.40282347e+38f;
};

template <>
struct Traits<double> {
  using I = int64_t;
  using U = uint64_t;
  static constexpr int kMantBits = 52;
  static constexpr int kSignBit = 63;
  static constexpr I kBias = 1023;
  static constexpr I kExpMask = 0x7ff;
  static constexpr I kMantMask = 0xfffffffffffffLL;
  static constexpr double kRoundMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kIntMagic = 4503599627370496.0;    // 2^52
  static constexpr double kExpLowest = -746.0;
  static constexpr double kExpHighest = 710.0;
  static constexpr double kLog2e = 1.44269504088896338700e+00;
  static constexpr double kExpLn2Hi = 6.93147180369123816490e-01;  // fdlibm split of ln 2
  static constexpr double kExpLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kLogLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLogLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kMinNormal = 2.2250738585072014e-308;
  static constexpr double kMaxFinite = 1.7976931348623157e+308;
};

// Rounds x (|x| < 2^22 for float, 2^51 for double) to the nearest integer: returns it as T and
// sets n to it as an integer. (x + magic) - magic is exact and is not folded without -ffast-math.
template <class T>
ADT_FN T round_to_int(T x, typename Traits<T>::I& n) {
  using I = typename Traits<T>::I;
  const T magic = Traits<T>::kRoundMagic;
  const T y = x + magic;
  n = bit_cast<I>(y) - bit_cast<I>(magic);
  return y - magic;
}

// Exact conversion of an integer 0 <= v < 2^mant to T without an int->float instruction
// (int64 -> double has none on AVX2, which would stop vectorisation).
template <class T>
ADT_FN T small_int_to_float(typename Traits<T>::I v) {
  using I = typename Traits<T>::I;
  const T magic = Traits<T>::kIntMagic;
  return bit_cast<T>(static_cast<I>(v | bit_cast<I>(magic))) - magic;
}

// Flips the sign of x where the integer `flip` is 2 (bit 1 set), keeps it where it is 0.
template <class T>
ADT_FN T flip_sign_if_bit1(T x, typename Traits<T>::I flip) {
  using U = typename Traits<T>::U;
  const U mask = (static_cast<U>(flip) & U(2)) << (Traits<T>::kSignBit - 1);
  return bit_cast<T>(static_cast<U>(bit_cast<U>(x) ^ mask));
}

namespace poly {

// Taylor coefficients of expm1(r) = r + r^2 (c0 + r (c1 + ...)), |r| <= ln2/2.
template <class T>
ADT_FN T expm1_reduced(T r);

template <>
ADT_FN float expm1_reduced<float>(float r) {
  // Truncation r^8/8! ~ 1.3e-8 relative at |r| = ln2/2.
  float q = 1.98412698e-4f;  // 1/7!
  q = q * r + 1.38888889e-3f;  // 1/6!
  q = q * r + 8.33333333e-3f;  // 1/5!
  q = q * r + 4.16666667e-2f;  // 1/4!
  q = q * r + 1.66666667e-1f;  // 1/3!
  q = q * r + 0.5f;
  return r + (r * r) * q;
}

template <>
ADT_FN double expm1_reduced<double>(double r) {
  // Truncation r^14/14! ~ 1.4e-17 relative at |r| = ln2/2.
  double q = 1.6059043836821614599e-10;  // 1/13!
  q = q * r + 2.0876756987868098979e-9;  // 1/12!
  q = q * r + 2.5052108385441718775e-8;  // 1/11!
  q = q * r + 2.7557319223985890653e-7;  // 1/10!
  q = q * r + 2.7557319223985890653e-6;  // 1/9!
  q = q * r + 2.4801587301587301587e-5;  // 1/8!
  q = q * r + 1.9841269841269841270e-4;  // 1/7!
  q = q * r + 1.3888888888888888889e-3;  // 1/6!
  q = q * r + 8.3333333333333333333e-3;  // 1/5!
  q = q * r + 4.1666666666666666667e-2;  // 1/4!
  q = q * r + 1.6666666666666666667e-1;  // 1/3!
  q = q * r + 0.5;
  return r + (r * r) * q;
}

// R(z) = sum_{j>=1} 2 z^j / (2j+1): log(1+f) = 2s + s R(s^2) with s = f / (2 + f), |s| <= 0.1716.
template <class T>
ADT_FN T log_series(T z);

template <>
ADT_FN float log_series<float>(float z) {
  // Truncation 2 s^10 / 11 relative to 2 s: ~2e-9.
  float q = 2.0f / 9.0f;
  q = q * z + 2.0f / 7.0f;
  q = q * z + 2.0f / 5.0f;
  q = q * z + 2.0f / 3.0f;
  return z * q;
}

template <>
ADT_FN double log_series<double>(double z) {
  // Truncation s^20 / 21 ~ 2.3e-17 relative.
  double q = 2.0 / 19.0;
  q = q * z + 2.0 / 17.0;
  q = q * z + 2.0 / 15.0;
  q = q * z + 2.0 / 13.0;
  q = q * z + 2.0 / 11.0;
  q = q * z + 2.0 / 9.0;
  q = q * z + 2.0 / 7.0;
  q = q * z + 2.0 / 5.0;
  q = q * z + 2.0 / 3.0;
  return z * q;
}

// sin(t) = t + t z S(z), cos(t) = 1 + z C(z) with z = t^2, |t| <= pi/4 (Taylor).
template <class T>
ADT_FN T sin_series(T z);
template <class T>
ADT_FN T cos_series(T z);

template <>
ADT_FN float sin_series<float>(float z) {  // through t^9: truncation ~2e-9
  float q = 2.75573192e-6f;      // 1/9!
  q = q * z - 1.98412698e-4f;    // 1/7!
  q = q * z + 8.33333333e-3f;    // 1/5!
  q = q * z - 1.66666667e-1f;    // 1/3!
  return q;
}

template <>
ADT_FN float cos_series<float>(float z) {  // through t^10: truncation ~1e-10
  float q = -2.75573192e-7f;     // 1/10!
  q = q * z + 2.48015873e-5f;    // 1/8!
  q = q * z - 1.38888889e-3f;    // 1/6!
  q = q * z + 4.16666667e-2f;    // 1/4!
  q = q * z - 0.5f;
  return q;
}

template <>
ADT_FN double sin_series<double>(double z) {  // through t^17: truncation ~1e-19
  double q = 2.8114572543455207632e-15;  // 1/17!
  q = q * z - 7.6471637318198164759e-13;  // 1/15!
  q = q * z + 1.6059043836821614599e-10;  // 1/13!
  q = q * z - 2.5052108385441718775e-8;   // 1/11!
  q = q * z + 2.7557319223985890653e-6;   // 1/9!
  q = q * z - 1.9841269841269841270e-4;   // 1/7!
  q = q * z + 8.3333333333333333333e-3;   // 1/5!
  q = q * z - 1.6666666666666666667e-1;   // 1/3!
  return q;
}

template <>
ADT_FN double cos_series<double>(double z) {  // through t^18: truncation ~1e-20
  double q = -1.5619206968586225271e-16;  // 1/18!
  q = q * z + 4.7794773323873852974e-14;  // 1/16!
  q = q * z - 1.1470745597729724714e-11;  // 1/14!
  q = q * z + 2.0876756987868098979e-9;   // 1/12!
  q = q * z - 2.7557319223985890653e-7;   // 1/10!
  q = q * z + 2.4801587301587301587e-5;   // 1/8!
  q = q * z - 1.3888888888888888889e-3;   // 1/6!
  q = q * z + 4.1666666666666666667e-2;   // 1/4!
  q = q * z - 0.5;
  return q;
}

}  // namespace poly

// e = exp(x) and em = expm1(x) from one Cody-Waite reduction x = n ln2 + r. Both are accurate
// to a few ulp relative (em also for tiny |x|, where exp(x) - 1 would cancel). Host and device.
template <class T>
ADT_FN void expm1_exp(T x, T& em, T& e) {
  using Tr = Traits<T>;
  using I = typename Tr::I;
  const T lowest = Tr::kExpLowest, highest = Tr::kExpHighest;
  x = x < lowest ? lowest : x;
  x = x > highest ? highest : x;
  I n;
  const T kf = round_to_int<T>(x * Tr::kLog2e, n);
  T r = x - kf * Tr::kExpLn2Hi;
  r = r - kf * Tr::kExpLn2Lo;
  const T p = poly::expm1_reduced<T>(r);
  // 2^n as two factors so that n down to about -2 * (bias - 1) stays representable.
  const I n1 = n >> 1;
  const I n2 = n - n1;
  const T s1 = bit_cast<T>(static_cast<I>((n1 + Tr::kBias) << Tr::kMantBits));
  const T s2 = bit_cast<T>(static_cast<I>((n2 + Tr::kBias) << Tr::kMantBits));
  e = ((T(1) + p) * s1) * s2;
  const T s = s1 * s2;
  em = p * s + (s - T(1));
}

// Host polynomial log for positive normal finite x: x = 2^k m with m in [sqrt(1/2), sqrt(2)).
template <class T>
ADT_FN void log_reduce(T x, T& k, T& m) {
  using Tr = Traits<T>;
  using I = typename Tr::I;
  const I bits = bit_cast<I>(x);
  const I biased = (bits >> Tr::kMantBits) & Tr::kExpMask;
  m = bit_cast<T>(static_cast<I>((bits & Tr::kMantMask) | bit_cast<I>(T(1))));  // [1, 2)
  const bool big = m > T(1.41421356237309504880);
  m = big ? m * T(0.5) : m;
  k = small_int_to_float<T>(biased) - (big ? T(Tr::kBias - 1) : T(Tr::kBias));
}

template <class T>
ADT_FN T log_poly(T x);

// float: fdlibm's form with a 4-term series (on AVX-512 this measured slightly faster than
// Cephes' division-free degree-9 polynomial), ~1 ulp.
template <>
ADT_FN float log_poly<float>(float x) {
  using Tr = Traits<float>;
  float k, m;
  log_reduce<float>(x, k, m);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float R = poly::log_series<float>(s * s);
  const float hfsq = 0.5f * f * f;
  return k * Tr::kLogLn2Hi - ((hfsq - (s * (hfsq + R) + k * Tr::kLogLn2Lo)) - f);
}

// double: fdlibm's form log(1+f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f), with a
// 9-term Taylor series for R, ~1 ulp.
template <>
ADT_FN double log_poly<double>(double x) {
  using Tr = Traits<double>;
  double k, m;
  log_reduce<double>(x, k, m);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double R = poly::log_series<double>(s * s);
  const double hfsq = 0.5 * f * f;
  return k * Tr::kLogLn2Hi - ((hfsq - (s * (hfsq + R) + k * Tr::kLogLn2Lo)) - f);
}

// Host polynomial sin(2 pi b), cos(2 pi b) for b in [0, 1): exact quadrant reduction of 4b.
template <class T>
ADT_FN void sincos_2pi_poly(T b, T& s, T& c) {
  using I = typename Traits<T>::I;
  I q;
  const T b4 = T(4) * b;
  const T qf = round_to_int<T>(b4, q);
  const T th = (b4 - qf) * T(1.57079632679489661923);  // in [-pi/4, pi/4]
  const T z = th * th;
  const T sp = th + th * z * poly::sin_series<T>(z);
  const T cp = T(1) + z * poly::cos_series<T>(z);
  const bool swap = (q & 1) != 0;
  const T cb = swap ? sp : cp;
  const T sb = swap ? cp : sp;
  c = flip_sign_if_bit1<T>(cb, q + 1);  // negative in quadrants 1, 2
  s = flip_sign_if_bit1<T>(sb, q);      // negative in quadrants 2, 3
}

// ---- the primitives the kernels call ---------------------------------------------------------

ADT_FN float sqrt_(float x) {
#if ADT_FAST_DEVICE_MATH()
  return sqrtf(x);
#elif defined(__GNUC__)
  return __builtin_sqrtf(x);
#else
  return std::sqrt(x);
#endif
}

ADT_FN double sqrt_(double x) {
#if ADT_FAST_DEVICE_MATH()
  return sqrt(x);
#elif defined(__GNUC__)
  return __builtin_sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// exp(x) (used with x <= 0).
ADT_FN float exp_(float x) {
#if ADT_FAST_DEVICE_MATH()
  return expf(x);
#else
  float em, e;
  expm1_exp<float>(x, em, e);
  return e;
#endif
}

ADT_FN double exp_(double x) {
#if ADT_FAST_DEVICE_MATH()
  return exp(x);
#else
  double em, e;
  expm1_exp<double>(x, em, e);
  return e;
#endif
}

// log(x) for positive normal finite x.
ADT_FN float log_(float x) {
#if ADT_FAST_DEVICE_MATH()
  return logf(x);
#else
  return log_poly<float>(x);
#endif
}

ADT_FN double log_(double x) {
#if ADT_FAST_DEVICE_MATH()
  return log(x);
#else
  return log_poly<double>(x);
#endif
}

// log(1 + x) for x >= 0.
template <class T>
ADT_FN T log1p_poly(T x) {
  const T u = T(1) + x;
  const T c = (u - T(1)) - x;  // rounding error of 1 + x
  return log_poly<T>(u) - c / u;
}

// log(1 + x) for x in [0, 1] as x + x^2 q(x), q a degree-8 fit (least squares on Chebyshev nodes,
// weighted for relative error): nine fused multiply-adds, a multiply and no branch (CUDA's
// log1pf takes about twice the instructions and a special-case branch). fmaf rounds once on host
// and device alike, so ctest measures what the device computes: at most 1.2 ulp, 1.07e-7 relative.
ADT_FN float log1p_unit_poly(float x) {
  float q = -0.0032271984964609146f;
  q = fmaf(q, x, 0.01979079470038414f);
  q = fmaf(q, x, -0.056882403790950775f);
  q = fmaf(q, x, 0.10600826144218445f);
  q = fmaf(q, x, -0.15308032929897308f);
  q = fmaf(q, x, 0.1967889964580536f);
  q = fmaf(q, x, -0.24955376982688904f);
  q = fmaf(q, x, 0.3333020508289337f);
  q = fmaf(q, x, -0.4999992251396179f);
  return fmaf(q * x, x, x);
}

// log(1 + x) for x in [0, 1] (softplus): device float the polynomial above, device double CUDA's
// log1p, the host its branch-free polynomial.
ADT_FN float log1p_unit(float x) {
#if ADT_FAST_DEVICE_MATH()
  return log1p_unit_poly(x);
#else
  return log1p_poly<float>(x);
#endif
}

ADT_FN double log1p_unit(double x) {
#if ADT_FAST_DEVICE_MATH()
  return log1p(x);
#else
  return log1p_poly<double>(x);
#endif
}

// sin(2 pi b), cos(2 pi b) for b in [0, 1) (host; the device takes the word, see sincos_2pi_word).
template <class T>
ADT_FN void sincos_2pi(T b, T& s, T& c) {
  sincos_2pi_poly<T>(b, s, c);
}

// ---- the per-sample primitives --------------------------------------------------------------
// Host (and device double): the accurate functions above. Device float: PTX's approximate
// instructions (one MUFU each), whose documented error bounds and the resulting budget against
// the tests' tolerance are in docs/kernels.md ("Device float maths"). ftz: results below 2^-126
// flush to 0, which changes nothing the op returns (see there).
#if defined(__CUDA_ARCH__)  // ctest's emulation defines its own (tests/cuda_emulation/emulation.h)
#define ADT_FAST_PTX_UNARY(NAME, INSTRUCTION)               \
  __device__ __forceinline__ float NAME(float x) {          \
    float y;                                                \
    asm(INSTRUCTION " %0, %1;" : "=f"(y) : "f"(x));         \
    return y;                                               \
  }
ADT_FAST_PTX_UNARY(ptx_ex2, "ex2.approx.ftz.f32")
ADT_FAST_PTX_UNARY(ptx_lg2, "lg2.approx.ftz.f32")
ADT_FAST_PTX_UNARY(ptx_rcp, "rcp.approx.ftz.f32")
ADT_FAST_PTX_UNARY(ptx_sqrt, "sqrt.approx.ftz.f32")
#undef ADT_FAST_PTX_UNARY
#endif

// |x| (a select on the host, where it vectorises; a free operand modifier on the device).
ADT_FN float abs_(float x) {
#if ADT_FAST_DEVICE_MATH()
  return fabsf(x);
#else
  return x < 0.0f ? -x : x;
#endif
}

ADT_FN double abs_(double x) {
#if ADT_FAST_DEVICE_MATH()
  return fabs(x);
#else
  return x < 0.0 ? -x : x;
#endif
}

// log(x) for positive normal x, where an absolute error of ~2e-7 (float) is enough: log sigma,
// which only enters -log p as a summand.
// It alone takes +inf (sigma = softplus(+inf)): the host polynomial, which reads +inf as a finite
// number, gives +inf there (and NaN for NaN), as the device's lg2 and log do, so -log p is the
// reference's inf - inf = NaN. Once per element; the per-sample logs keep the bare polynomial.
template <class T>
ADT_FN T log_poly_non_finite(T x) {
  return x <= Traits<T>::kMaxFinite ? log_poly<T>(x) : x;
}

ADT_FN float log_abs_err(float x) {
#if ADT_FAST_DEVICE_MATH()
  return ptx_lg2(x) * 0.69314718055994530942f;
#else
  return log_poly_non_finite<float>(x);
#endif
}

ADT_FN double log_abs_err(double x) {
#if ADT_FAST_DEVICE_MATH()
  return log(x);
#else
  return log_poly_non_finite<double>(x);
#endif
}

// a / b for b in [2^-126, 2^126] (float: one rcp.approx.ftz and a multiply on the device;
// __fdividef's non-ftz reciprocal adds a rescaling for subnormal b, which cannot occur here).
ADT_FN float div_(float a, float b) {
#if ADT_FAST_DEVICE_MATH()
  return a * ptx_rcp(b);
#else
  return a / b;
#endif
}

ADT_FN double div_(double a, double b) { return a / b; }

// exp(-|x|) (device float: one ex2.approx, relative error 2 ulp plus |x| 2^-24 from rounding
// the argument; softplus(rho) = max(rho, 0) + log1p(exp(-|rho|)) moves by at most 1.2e-7).
ADT_FN float exp_neg_abs(float x) {
#if ADT_FAST_DEVICE_MATH()
  return ptx_ex2(fabsf(x) * -1.44269504088896340736f);
#else
  return exp_(-abs_(x));
#endif
}

ADT_FN double exp_neg_abs(double x) { return exp_(-abs_(x)); }

// a * b + c, fused on the device (the host leaves contraction to the compiler, so that loops
// without FMA hardware do not call libm).
template <class T>
ADT_FN T fma_(T a, T b, T c) {
#if ADT_FAST_DEVICE_MATH()
  return fma(a, b, c);
#else
  return a * b + c;
#endif
}

// log2(exp(-2a)) = -2 a log2(e): on the device exactly the argument exp_neg2 gives ex2.approx, so
// the multiply is shared.
template <class T>
ADT_FN T log2_exp_neg2(T a) {
  return a * T(-2.88539008177792681472);
}

// e = exp(-2a) and 1 - e for a >= 0 (host: 1 - e as -expm1(-2a), accurate for tiny a).
ADT_FN void exp_neg2(float a, float& e, float& one_minus_e) {
#if ADT_FAST_DEVICE_MATH()
  e = ptx_ex2(log2_exp_neg2(a));
  one_minus_e = 1.0f - e;
#else
  float em;
  expm1_exp<float>(-2.0f * a, em, e);
  one_minus_e = -em;
#endif
}

ADT_FN void exp_neg2(double a, double& e, double& one_minus_e) {
  double em;
  expm1_exp<double>(-2.0 * a, em, e);
  one_minus_e = -em;
}

// 1 / x for x in [1, 2].
ADT_FN float rcp_(float x) {
#if ADT_FAST_DEVICE_MATH()
  return ptx_rcp(x);
#else
  return 1.0f / x;
#endif
}

ADT_FN double rcp_(double x) { return 1.0 / x; }

// log2(x) for x in [1, 2] (device float: one lg2.approx).
ADT_FN float log2_1to2(float x) {
#if ADT_FAST_DEVICE_MATH()
  return ptx_lg2(x);
#else
  return log_poly<float>(x) * 1.44269504088896340736f;
#endif
}

ADT_FN double log2_1to2(double x) { return log_(x) * 1.44269504088896340736; }

// copysign(magnitude, sign of v) where a zero v counts as positive (the host's select).
ADT_FN float with_sign_of(float magnitude, float v) {
#if ADT_FAST_DEVICE_MATH()
  return copysignf(magnitude, v);
#else
  return v < 0.0f ? -magnitude : magnitude;
#endif
}

ADT_FN double with_sign_of(double magnitude, double v) { return v < 0.0 ? -magnitude : magnitude; }

// -2 log(1 - c) for 0 <= c <= 1/16 as c Q(c), Q a degree-4 least-squares fit on Chebyshev nodes
// (fit error 1e-9 relative; 1.2e-7 with float rounding, ctest). The device uses it where
// lg2.approx's absolute error would swamp a logarithm close to 0.
ADT_FN float neg2_log1m_near0(float c) {
  float q = 0.4570601284503937f;
  q = fmaf(q, c, 0.49678531289100647f);
  q = fmaf(q, c, 0.6667395234107971f);
  q = fmaf(q, c, 0.9999994039535522f);
  q = fmaf(q, c, 2.0f);
  return q * c;
}

// Box-Muller's squared radius -2 ln a for a = ((w >> 8) + 1) 2^-24 in (0, 1].
ADT_FN float neg2_log_uniform(float a) {
#if ADT_FAST_DEVICE_MATH()
  const float c = 1.0f - a;  // exact (a >= 1/2 wherever it is used)
  const float near1 = neg2_log1m_near0(c);
  const float far = ptx_lg2(a) * -1.38629436111989061883f;  // -2 ln 2
  return c <= 0.0625f ? near1 : far;
#else
  return -2.0f * log_poly<float>(a);
#endif
}

ADT_FN double neg2_log_uniform(double a) { return -2.0 * log_(a); }

// torch.clamp(v, lo, hi) for lo <= hi: a NaN v stays NaN (selects on the host; on sm_80 and up,
// PTX's NaN-propagating max/min, one instruction each).
template <class T>
ADT_FN T clamp_(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <>
__device__ __forceinline__ float clamp_<float>(float v, float lo, float hi) {
  float out;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(out) : "f"(v), "f"(lo));
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(out) : "f"(out), "f"(hi));
  return out;
}
#endif

// sqrt(x) for x >= 0.
ADT_FN float sqrt_fast(float x) {
#if ADT_FAST_DEVICE_MATH()
  return ptx_sqrt(x);
#else
  return sqrt_(x);
#endif
}

ADT_FN double sqrt_fast(double x) { return sqrt_(x); }

}  // namespace math
}  // namespace adt_fast
