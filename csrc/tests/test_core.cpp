// Standalone tests of the torch-free core (ctest): Philox known-answer values, the normals
// mapping, the branch-free math primitives, and the CPU kernels (forward + backward, float and
// double, with and without x / noise) against a plain scalar loop written here with libm.
#include <algorithm>
#include <cinttypes>
#include <initializer_list>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/chunking.h"
#include "core/elementwise.h"
#include "core/intdiv.h"
#include "core/philox.h"
#include "tests/check.h"
#include "cpu/adt_cpu.h"
#include "cpu/kernels.h"

namespace {

using adt_test::rel_err;

// ---- Philox ----------------------------------------------------------------------------------

void test_philox_kat() {
  struct Kat {
    uint32_t c[4], k[2], out[4];
  };
  const Kat kats[] = {
      {{0u, 0u, 0u, 0u}, {0u, 0u}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& kat : kats) {
    uint32_t c0 = kat.c[0], c1 = kat.c[1], c2 = kat.c[2], c3 = kat.c[3];
    adt_fast::philox4x32_10(c0, c1, c2, c3, kat.k[0], kat.k[1]);
    CHECK(c0 == kat.out[0] && c1 == kat.out[1] && c2 == kat.out[2] && c3 == kat.out[3],
          "Philox4x32-10(%08x %08x %08x %08x; %08x %08x) = %08x %08x %08x %08x, expected %08x %08x %08x %08x",
          kat.c[0], kat.c[1], kat.c[2], kat.c[3], kat.k[0], kat.k[1], c0, c1, c2, c3, kat.out[0], kat.out[1],
          kat.out[2], kat.out[3]);
    // The same through the (seed, quad, offset + s) mapping of docs/randomness.md.
    const uint64_t seed = (static_cast<uint64_t>(kat.k[1]) << 32) | kat.k[0];
    const uint64_t q = (static_cast<uint64_t>(kat.c[1]) << 32) | kat.c[0];
    const uint64_t ctr = (static_cast<uint64_t>(kat.c[3]) << 32) | kat.c[2];
    uint32_t w[4];
    adt_fast::philox_words4(adt_fast::philox_key(seed), q, ctr, w[0], w[1], w[2], w[3]);
    CHECK(std::memcmp(w, kat.out, sizeof(w)) == 0, "philox_words4 disagrees with the KAT");
  }
}

// Words of the CPU entry point, [k, ceil(numel / 4), 4], against philox_words4, quad by quad:
// numel not a multiple of 4 (a last partial quad), and quads in several ranges.
void test_words_entry_point() {
  const uint64_t seed = 0xfedcba9876543210ull, offset = 0xffffffffull - 5;  // offset + s crosses 2^32
  const int64_t numel = 4 * 4096 + 9001, k = 13, quads = adt_fast::num_quads(numel);
  CHECK(quads == 6347, "num_quads(%" PRId64 ") = %" PRId64 ", want 6347", numel, quads);
  std::vector<int64_t> words(static_cast<size_t>(k * quads * 4), -1);
  adt_fast::cpu::philox_words(seed, offset, numel, k, words.data(), 2);
  int bad = 0;
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t q = 0; q < quads; ++q) {
      uint32_t w[4];
      adt_fast::philox_words4(adt_fast::philox_key(seed), static_cast<uint64_t>(q), offset + s, w[0], w[1], w[2],
                              w[3]);
      for (int l = 0; l < 4; ++l) bad += words[(s * quads + q) * 4 + l] != static_cast<int64_t>(w[l]);
    }
  }
  CHECK(bad == 0, "%d words of cpu::philox_words differ from philox_words4", bad);
}

// The SIMD Philox of every compiled instruction set (quads [q0, q0 + len): whole and partial
// vector steps), also where q's low word wraps inside a vector.
void test_simd_philox_tiles() {
  std::vector<const adt_fast::cpu::detail::KernelTable*> tables{&adt_fast::cpu::detail::table_generic()};
#if defined(ADT_FAST_X86_MULTIVERSION)
  const std::string available = adt_fast::cpu::available_isas();
  if (available.find("avx2") != std::string::npos) tables.push_back(&adt_fast::cpu::detail::table_avx2());
  if (available.find("avx512") != std::string::npos) tables.push_back(&adt_fast::cpu::detail::table_avx512());
#endif
  const uint64_t seed = 0x0123456789abcdefull, ctr = 0xfffffffeull;
  const uint64_t starts[] = {0ull, 5ull, 0xffffffffull - 100, 0xffffffffull - 7, (7ull << 32) + 3};
  for (const auto* table : tables) {
    for (uint64_t q0 : starts) {
      for (int len : {256, 255, 100, 64, 63, 17, 1}) {
        uint32_t w[4][257];
        for (auto& lane : w) std::fill(std::begin(lane), std::end(lane), 0xa5a5a5a5u);
        table->philox_tile(seed, ctr, q0, len, w[0], w[1], w[2], w[3]);
        int bad = 0;
        for (int i = 0; i < len; ++i) {
          uint32_t v[4];
          adt_fast::philox_words4(adt_fast::philox_key(seed), q0 + i, ctr, v[0], v[1], v[2], v[3]);
          for (int l = 0; l < 4; ++l) bad += w[l][i] != v[l];
        }
        for (int l = 0; l < 4; ++l) bad += w[l][len] != 0xa5a5a5a5u;  // nothing written past len
        CHECK(bad == 0, "%s Philox tile at q0=%" PRIu64 " len=%d: %d words differ", table->name, q0, len, bad);
      }
    }
  }
}

// r[s, n] for seed 0x0123456789abcdef, offset 42, from adt_fast/ops/reference.py (float64).
void test_normals_mapping() {
  struct Case {
    uint64_t n;
    int64_t s;
    double r;
  };
  const Case cases[] = {
      {0ull, 0, 0.05694197258112666},        {1ull, 0, 0.7856133730497549},
      {2ull, 0, 1.0099409530995496},         {3ull, 0, 1.401235434238142},
      {5ull, 4, -1.8856760167124171},        {4097ull, 5, -0.2861325602556563},
      {4098ull, 7, 0.25704071590547134},     {4099ull, 7, -0.11932742020044022},
      {4294967301ull, 2, -1.2668865646226453}, {17179869190ull, 3, 3.73190091648122},  // quad 2^32 + 1
      {123456ull, 9, -0.37165896464630366},
  };
  const uint64_t seed = 0x0123456789abcdefull, offset = 42;
  for (const Case& c : cases) {
    const double rd = adt_fast::philox_normal<double>(seed, offset, c.n, c.s);
    const float rf = adt_fast::philox_normal<float>(seed, offset, c.n, c.s);
    CHECK(std::fabs(rd - c.r) <= 1e-14, "r[%" PRId64 ", %" PRIu64 "] = %.17g (double), reference %.17g", c.s, c.n,
          rd, c.r);
    CHECK(std::fabs(rf - c.r) <= 2e-6, "r[%" PRId64 ", %" PRIu64 "] = %.9g (float), reference %.17g", c.s, c.n,
          static_cast<double>(rf), c.r);
  }
  // Uniform edge cases: a(w) in (0, 1], b(w) in [0, 1), exact.
  CHECK(adt_fast::uniform_open0<float>(0u) == 5.9604644775390625e-08f, "a(0) must be 2^-24");
  CHECK(adt_fast::uniform_open0<double>(0xffffffffu) == 1.0, "a(0xffffffff) must be 1");
  CHECK(adt_fast::uniform_closed1<double>(0u) == 0.0, "b(0) must be 0");
  CHECK(adt_fast::uniform_closed1<float>(0xffffffffu) == 1.0f - 5.9604644775390625e-08f, "b(max) = 1 - 2^-24");
  double zc, zs;
  adt_fast::box_muller<double>(0xffffffffu, 0u, zc, zs);  // radius 0
  CHECK(zc == 0.0 && zs == 0.0, "a = 1 gives radius 0, got %g %g", zc, zs);
  float fc, fs;
  adt_fast::box_muller<float>(0u, 0u, fc, fs);  // the largest radius, angle 0
  CHECK(std::isfinite(fc) && std::fabs(fc - std::sqrt(48.0 * std::log(2.0))) < 1e-5 && fs == 0.0f,
        "a = 2^-24 gives the largest radius sqrt(48 ln 2), got %g %g", static_cast<double>(fc),
        static_cast<double>(fs));
}

// ---- math primitives -------------------------------------------------------------------------

template <class T>
void test_primitives(const char* name, double tol) {
  using LD = long double;
  std::mt19937_64 rng(7);
  double worst_exp = 0, worst_expm1 = 0, worst_log = 0, worst_log1p = 0, worst_sc = 0;
  for (int i = 0; i < 200000; ++i) {
    const double uexp = std::uniform_real_distribution<double>(-100.0, 0.0)(rng);
    const double small = std::ldexp(std::uniform_real_distribution<double>(-1.0, 1.0)(rng), -(i % 40));
    const T x = static_cast<T>(i % 2 ? uexp : small);
    T em, e;
    adt_fast::math::expm1_exp<T>(x, em, e);
    const LD te = std::exp(static_cast<LD>(x)), tem = std::expm1(static_cast<LD>(x));
    if (te > static_cast<LD>(std::numeric_limits<T>::min()))
      worst_exp = std::max(worst_exp, static_cast<double>(std::fabs((e - te) / te)));
    if (tem != 0) worst_expm1 = std::max(worst_expm1, static_cast<double>(std::fabs((em - tem) / tem)));

    const T y = static_cast<T>(std::exp(std::uniform_real_distribution<double>(-40.0, 40.0)(rng)));
    const LD tl = std::log(static_cast<LD>(y));
    worst_log = std::max(worst_log, static_cast<double>(std::fabs(adt_fast::math::log_poly<T>(y) - tl) /
                                                        std::max<LD>(std::fabs(tl), 1)));
    const T z = static_cast<T>(i % 3 ? std::uniform_real_distribution<double>(0.0, 1.0)(rng) : std::fabs(small));
    const LD tl1 = std::log1p(static_cast<LD>(z));
    if (tl1 != 0)
      worst_log1p = std::max(worst_log1p, static_cast<double>(std::fabs((adt_fast::math::log1p_poly<T>(z) - tl1) / tl1)));

    const uint32_t w = static_cast<uint32_t>(rng());
    const T b = adt_fast::uniform_closed1<T>(w);
    T s, c;
    adt_fast::math::sincos_2pi_poly<T>(b, s, c);
    const LD angle = 2 * 3.14159265358979323846264338327950288L * static_cast<LD>(b);
    worst_sc = std::max({worst_sc, static_cast<double>(std::fabs(s - std::sin(angle))),
                         static_cast<double>(std::fabs(c - std::cos(angle)))});
  }
  std::printf("  %s primitives: max rel err exp %.2e expm1 %.2e log %.2e log1p %.2e; sincos abs %.2e\n", name,
              worst_exp, worst_expm1, worst_log, worst_log1p, worst_sc);
  CHECK(worst_exp <= tol && worst_expm1 <= tol && worst_log <= tol && worst_log1p <= tol && worst_sc <= tol,
        "%s primitive error above %.1e", name, tol);
  // Limits.
  T em, e;
  adt_fast::math::expm1_exp<T>(static_cast<T>(-1e30), em, e);
  CHECK(e == T(0) && em == T(-1), "exp(-huge) = %g, expm1 = %g", static_cast<double>(e), static_cast<double>(em));
  adt_fast::math::expm1_exp<T>(-std::numeric_limits<T>::infinity(), em, e);
  CHECK(e == T(0) && em == T(-1), "exp(-inf) = %g", static_cast<double>(e));
  adt_fast::math::expm1_exp<T>(T(0), em, e);
  CHECK(e == T(1) && em == T(0), "exp(0) = %g, expm1(0) = %g", static_cast<double>(e), static_cast<double>(em));
  CHECK(adt_fast::math::log_poly<T>(T(1)) == T(0), "log(1) must be 0");
}

// ---- host parts of the device float path ---------------------------------------------------------

// What the CUDA kernels compute with host-checkable maths: Box-Muller's -2 log near a = 1 (the
// polynomial that replaces lg2.approx there), log1p on [0, 1] (softplus), the signed-word angle of
// sincos_2pi_word (the same angle as 2 pi b(w) up to a whole turn), and the multiply-high example
// index. The polynomials use fmaf, which rounds as the device's FFMA does.
void test_device_float_pieces() {
  using LD = long double;
  double worst_series = 0;
  for (uint32_t m = (1u << 24) - 1; m >= (1u << 24) - (1u << 20); --m) {  // every a in [15/16, 1)
    const float a = adt_fast::uniform_open0<float>(m << 8);
    const float c = 1.0f - a;  // exact
    const LD want = -2 * std::log(static_cast<LD>(a));
    const double err = static_cast<double>(std::fabs((adt_fast::math::neg2_log1m_near0(c) - want) / want));
    worst_series = std::max(worst_series, err);
  }
  std::printf("  -2 log(1 - c) for c <= 1/16: max rel err %.2e\n", worst_series);
  CHECK(worst_series <= 2e-7, "-2 log(1 - c) polynomial error %.2e above float rounding", worst_series);

  double worst_log1p = 0;
  const auto check_log1p = [&](float x) {
    const LD want = std::log1p(static_cast<LD>(x));
    const double err = static_cast<double>(std::fabs((adt_fast::math::log1p_unit_poly(x) - want) / want));
    worst_log1p = std::max(worst_log1p, err);
  };
  for (uint32_t i = 1; i <= (1u << 22); ++i) check_log1p(static_cast<float>(i) * 0x1p-22f);  // (0, 1]
  for (int e = 23; e <= 126; ++e) check_log1p(std::ldexp(1.5f, -e));                        // tiny
  std::printf("  log1p on [0, 1]: max rel err %.2e\n", worst_log1p);
  CHECK(worst_log1p <= 2e-7, "log1p polynomial error %.2e above float rounding", worst_log1p);

  std::mt19937_64 rng(11);
  double worst_angle = 0;
  for (int i = 0; i < 100000; ++i) {
    const uint32_t w = static_cast<uint32_t>(rng());
    const LD turn = static_cast<LD>(static_cast<int32_t>(w) >> 8) / 16777216.0L;  // device angle / 2 pi
    const LD b = static_cast<LD>(adt_fast::uniform_closed1<double>(w));
    const LD diff = b - turn;  // 0 or 1: a whole turn
    worst_angle = std::max(worst_angle, static_cast<double>(std::fabs(diff - std::round(diff))));
  }
  CHECK(worst_angle == 0.0, "signed-word angle differs from 2 pi b(w) by %.3g turns", worst_angle);

  const uint32_t divisors[] = {1, 2, 3, 7, 255, 256, 257, 3072, 65537, 1000003, 0x7fffffffu};
  for (uint32_t d : divisors) {
    const adt_fast::FastDivider div(d);
    for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{d} - 1, uint64_t{d}, uint64_t{d} + 1, uint64_t{3} * d + 5,
                       uint64_t{0x7fffffff}, uint64_t{0x7ffffffe}, uint64_t{123456789}}) {
      if (n > 0x7fffffffu) continue;
      CHECK(div.div(static_cast<uint32_t>(n)) == n / d, "FastDivider(%u).div(%" PRIu64 ") = %u", d, n,
            div.div(static_cast<uint32_t>(n)));
    }
    for (int i = 0; i < 2000; ++i) {
      const uint32_t n = static_cast<uint32_t>(rng() & 0x7fffffffu);
      CHECK(div.div(n) == n / d, "FastDivider(%u).div(%u) = %u", d, n, div.div(n));
    }
  }
}

// ---- the kernels against a scalar loop -------------------------------------------------------

double softplus(double r) { return r > 0 ? r + std::log1p(std::exp(-r)) : std::log1p(std::exp(r)); }
double log_softplus(double r) { return r < -20 ? r - 0.5 * std::exp(r) : std::log(softplus(r)); }
double sigmoid(double r) { return r >= 0 ? 1 / (1 + std::exp(-r)) : std::exp(r) / (1 + std::exp(r)); }
double sigmoid_over_softplus(double r) { return r < -20 ? 1 - 0.5 * std::exp(r) : sigmoid(r) / softplus(r); }
double log1m_tanh_sq(double u) {
  const double a = std::fabs(u);
  return 2 * (std::log(2.0) - a - softplus(-2 * a));
}

// r[s, n] with libm (what adt_fast/ops/reference.py does in float64): lane n mod 4 of quad n div 4.
double scalar_normal(uint64_t seed, uint64_t offset, uint64_t n, int64_t s) {
  uint32_t w[4];
  adt_fast::philox_words4(adt_fast::philox_key(seed), n / 4, offset + static_cast<uint64_t>(s), w[0], w[1], w[2], w[3]);
  const int lane = static_cast<int>(n % 4);
  const uint32_t wa = w[lane < 2 ? 0 : 2], wb = w[lane < 2 ? 1 : 3];
  const double a = ((wa >> 8) + 1.0) / 16777216.0, b = (wb >> 8) / 16777216.0;
  const double radius = std::sqrt(-2 * std::log(a)), angle = 2 * 3.14159265358979323846 * b;
  return radius * ((lane & 1) ? std::sin(angle) : std::cos(angle));
}

struct Problem {
  int64_t batch, dim, k;
  bool noise, x;
  double eps, lo, hi;
};

struct Result {
  std::vector<double> out, nlp, grad_mean, grad_std, grad_x;
  std::vector<char> near;  // x + delta within rounding of a clamp bound for some sample
};

struct Inputs {
  std::vector<double> mean, rho, x, noise, grad_out, grad_nlp;
  uint64_t seed = 0x9e3779b97f4a7c15ull, offset = 12345;
};

Inputs make_inputs(const Problem& p, uint64_t rng_seed) {
  std::mt19937_64 rng(rng_seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const int64_t n = p.batch * p.dim;
  Inputs in;
  for (int64_t i = 0; i < n; ++i) {
    in.mean.push_back(normal(rng));
    in.rho.push_back(-4 + 7 * uni(rng));
    in.x.push_back(uni(rng));
  }
  for (int64_t i = 0; i < p.k * n; ++i) {
    in.noise.push_back(normal(rng));
    in.grad_out.push_back(normal(rng));
  }
  for (int64_t i = 0; i < p.k * p.batch; ++i) in.grad_nlp.push_back(normal(rng));
  return in;
}

Result scalar_reference(const Problem& p, const Inputs& in) {
  const int64_t n_total = p.batch * p.dim;
  Result res;
  res.out.assign(static_cast<size_t>(p.k * n_total), 0.0);
  res.nlp.assign(static_cast<size_t>(p.k * p.batch), 0.0);
  res.grad_mean.assign(static_cast<size_t>(n_total), 0.0);
  res.grad_std.assign(static_cast<size_t>(n_total), 0.0);
  res.grad_x.assign(static_cast<size_t>(n_total), 0.0);
  res.near.assign(static_cast<size_t>(n_total), 0);
  const double constant = (0.5 * std::log(2 * 3.14159265358979323846) + std::log(p.eps)) * p.dim;
  for (int64_t s = 0; s < p.k; ++s)
    for (int64_t b = 0; b < p.batch; ++b) res.nlp[s * p.batch + b] = constant;
  for (int64_t n = 0; n < n_total; ++n) {
    const int64_t b = n / p.dim;
    const double mu = in.mean[n], rho = in.rho[n], sigma = softplus(rho);
    double du_sum = 0, dur_sum = 0, ge_sum = 0, gx_sum = 0;
    for (int64_t s = 0; s < p.k; ++s) {
      const double r = p.noise ? in.noise[s * n_total + n] : scalar_normal(in.seed, in.offset, n, s);
      const double u = mu + sigma * r, t = std::tanh(u), delta = p.eps * t;
      const double lm = log1m_tanh_sq(u);
      res.out[s * n_total + n] = p.x ? std::min(std::max(in.x[n] + delta, p.lo), p.hi) : delta;
      res.nlp[s * p.batch + b] += 0.5 * r * r + log_softplus(rho) + lm;
      double gd = in.grad_out[s * n_total + n];
      if (p.x) {
        const double v = in.x[n] + delta;
        gd = (v >= p.lo && v <= p.hi) ? gd : 0.0;
        if (std::fabs(v - p.lo) < 1e-4 || std::fabs(v - p.hi) < 1e-4) res.near[n] = 1;
        gx_sum += gd;
      }
      const double ge = in.grad_nlp[s * p.batch + b];
      const double du = gd * p.eps * std::exp(lm) - 2 * ge * t;
      du_sum += du;
      dur_sum += du * r;
      ge_sum += ge;
    }
    res.grad_mean[n] = du_sum;
    res.grad_std[n] = sigmoid(rho) * dur_sum + sigmoid_over_softplus(rho) * ge_sum;
    res.grad_x[n] = gx_sum;
  }
  return res;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
Result run_kernels(const Problem& p, const Inputs& in, int threads) {
  const int64_t n_total = p.batch * p.dim;
  const std::vector<T> mean = cast<T>(in.mean), rho = cast<T>(in.rho), x = cast<T>(in.x), noise = cast<T>(in.noise),
                       grad_out = cast<T>(in.grad_out), grad_nlp = cast<T>(in.grad_nlp);
  std::vector<T> out(static_cast<size_t>(p.k * n_total)), nlp(static_cast<size_t>(p.k * p.batch));
  std::vector<T> gm(static_cast<size_t>(n_total)), gs(static_cast<size_t>(n_total)), gx(static_cast<size_t>(n_total));
  const T* xp = p.x ? x.data() : nullptr;
  const T* np = p.noise ? noise.data() : nullptr;
  adt_fast::cpu::sample_forward(mean.data(), rho.data(), xp, np, in.seed, in.offset, p.batch, p.dim, p.k, p.eps, p.lo,
                                p.hi, out.data(), nlp.data(), threads);
  adt_fast::cpu::sample_backward(grad_out.data(), n_total, 1, grad_nlp.data(), p.batch, 1, mean.data(), rho.data(), xp, np, in.seed,
                                 in.offset, p.batch, p.dim, p.k, p.eps, p.lo, p.hi, gm.data(), gs.data(),
                                 p.x ? gx.data() : nullptr, threads);
  Result r;
  r.out.assign(out.begin(), out.end());
  r.nlp.assign(nlp.begin(), nlp.end());
  r.grad_mean.assign(gm.begin(), gm.end());
  r.grad_std.assign(gs.begin(), gs.end());
  if (p.x) r.grad_x.assign(gx.begin(), gx.end());
  return r;
}

bool all_finite(const std::vector<double>& v) {
  for (double d : v)
    if (!std::isfinite(d)) return false;
  return true;
}

template <class T>
void check_problem(const Problem& p, double tol) {
  const Inputs in = make_inputs(p, static_cast<uint64_t>(p.batch * 131 + p.dim * 7 + p.k));
  const Result want = scalar_reference(p, in);
  Result got = run_kernels<T>(p, in, 0);
  if (p.x && sizeof(T) == 4) {
    // A float kernel and the double loop may disagree on whether the clamp passes the gradient
    // where x + delta lies within rounding of a bound: compare the other elements.
    for (size_t i = 0; i < want.near.size(); ++i) {
      if (want.near[i]) got.grad_mean[i] = want.grad_mean[i], got.grad_std[i] = want.grad_std[i],
                        got.grad_x[i] = want.grad_x[i];
    }
  }
  const char* type = sizeof(T) == 8 ? "double" : "float";
  const double e[] = {rel_err(got.out, want.out), rel_err(got.nlp, want.nlp), rel_err(got.grad_mean, want.grad_mean),
                      rel_err(got.grad_std, want.grad_std), p.x ? rel_err(got.grad_x, want.grad_x) : 0.0};
  const double worst = *std::max_element(std::begin(e), std::end(e));
  CHECK(worst <= tol && all_finite(got.out) && all_finite(got.nlp) && all_finite(got.grad_std),
        "%s B=%" PRId64 " D=%" PRId64 " k=%" PRId64 " noise=%d x=%d: rel err out %.2e nlp %.2e gmean %.2e gstd %.2e "
        "gx %.2e > %.1e",
        type, p.batch, p.dim, p.k, p.noise, p.x, e[0], e[1], e[2], e[3], e[4], tol);
  // The same bits for any number of threads.
  const Result one = run_kernels<T>(p, in, 1), two = run_kernels<T>(p, in, 2), three = run_kernels<T>(p, in, 3);
  CHECK(one.out == two.out && one.nlp == two.nlp && one.grad_mean == two.grad_mean && one.grad_std == two.grad_std &&
            one.grad_x == two.grad_x && one.nlp == three.nlp && one.grad_std == three.grad_std,
        "%s B=%" PRId64 " D=%" PRId64 ": results depend on the thread count", type, p.batch, p.dim);
}

void test_kernels() {
  const double inf = std::numeric_limits<double>::infinity();
  const Problem shapes[] = {
      {3, 37, 5, false, false, 0.3, -inf, inf},   // small
      {2, 5000, 3, false, false, 0.5, -inf, inf},  // examples split into chunks
      {700, 1, 9, false, false, 0.1, -inf, inf},   // many examples per chunk
      {4, 300, 64, false, false, 8.0 / 255, -inf, inf},
      {5, 1031, 6, false, false, 0.2, -inf, inf},  // ranges of 3 examples: the second starts mid-quad
      {3, 4099, 3, false, false, 0.4, -inf, inf},  // chunks of examples that start mid-quad
  };
  int problems = 0;
  for (const char* isa : {"avx512", "avx2", "generic"}) {
    if (!adt_fast::cpu::set_isa(isa)) {
      std::printf("  isa %s: not supported here, skipped\n", isa);
      continue;
    }
    for (Problem p : shapes) {
      for (int noise = 0; noise < 2; ++noise) {
        for (int x = 0; x < 2; ++x) {
          p.noise = noise;
          p.x = x;
          p.lo = x ? 0.1 : -inf;
          p.hi = x ? 0.9 : inf;
          check_problem<double>(p, 1e-12);
          check_problem<float>(p, 1e-5);
          problems += 2;
        }
      }
    }
    std::printf("  isa %s: kernels agree with the scalar loop\n", isa);
  }
  std::printf("  %d kernel problems checked\n", problems);
}

void test_extremes() {
  // |mean| up to 50 and std_param in [-80, 80]: finite and equal to the scalar loop.
  Problem p{21, 9, 4, true, false, 0.5, -std::numeric_limits<double>::infinity(),
            std::numeric_limits<double>::infinity()};
  Inputs in = make_inputs(p, 3);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t j = 0; j < p.dim; ++j) {
      in.mean[b * p.dim + j] = -50 + 5.0 * b;
      in.rho[b * p.dim + j] = -80 + 20.0 * j;
    }
  const Result want = scalar_reference(p, in);
  const Result gd = run_kernels<double>(p, in, 0);
  const Result gf = run_kernels<float>(p, in, 0);
  for (const auto* pair : {&gd, &gf}) {
    const double tol = pair == &gd ? 1e-12 : 1e-5;
    CHECK(all_finite(pair->out) && all_finite(pair->nlp) && all_finite(pair->grad_mean) && all_finite(pair->grad_std),
          "extreme inputs give non-finite results");
    CHECK(rel_err(pair->out, want.out) <= tol && rel_err(pair->nlp, want.nlp) <= tol &&
              rel_err(pair->grad_mean, want.grad_mean) <= tol && rel_err(pair->grad_std, want.grad_std) <= tol,
          "extreme inputs (%s): rel err out %.2e nlp %.2e gmean %.2e gstd %.2e", pair == &gd ? "double" : "float",
          rel_err(pair->out, want.out), rel_err(pair->nlp, want.nlp), rel_err(pair->grad_mean, want.grad_mean),
          rel_err(pair->grad_std, want.grad_std));
  }
}

void test_empty() {
  // B = 0: nothing to do; D = 0: -log p is 0 (no elements, no constant).
  float nlp[6] = {1, 1, 1, 1, 1, 1};
  adt_fast::cpu::sample_forward(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, 1, 2, 0, 5, 3, 0.1,
                                0.0, 1.0, nullptr, nlp, 0);
  CHECK(nlp[0] == 1.0f, "B = 0 must not write");
  adt_fast::cpu::sample_forward(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, 1, 2, 2, 0, 3, 0.1,
                                0.0, 1.0, nullptr, nlp, 0);
  bool zeros = true;
  for (float v : nlp) zeros = zeros && v == 0.0f;
  CHECK(zeros, "D = 0 must give -log p = 0");
  adt_fast::cpu::sample_backward(static_cast<const double*>(nullptr), 0, 0, nullptr, 0, 0, nullptr, nullptr, nullptr, nullptr,
                                 1, 2, 0, 4, 2, 0.1, 0.0, 1.0, nullptr, nullptr, nullptr, 0);
  adt_fast::cpu::philox_words(1, 2, 0, 5, nullptr, 0);
}

// The CUDA kernels' work split (core/chunking.h), replayed on the host the way for_each_chunk
// walks it with a small grid: every element is taken by exactly one (lane, i), chunks name
// their example and place correctly, and a group of lanes never straddles two examples.
void test_chunking() {
  const int warps_in_grid = 3 * 8;  // 3 blocks of 8 warps: the grid-stride loop runs several trips
  for (const int per_lane : {adt_fast::kElementsPerThread, adt_fast::kElementsPerThreadSmallCalls}) {
    for (int64_t batch : {1, 2, 7, 33}) {
      for (int64_t dim : {1, 3, 8, 9, 17, 31, 64, 200, 255, 256, 257, 784, 3072}) {
        const adt_fast::Chunking chunks = adt_fast::Chunking::of(batch, dim, per_lane);
        int expected_lanes = 1;  // the fewest lanes (a power of two, at most 32) whose chunk holds D
        while (expected_lanes < 32 && expected_lanes * per_lane < dim) expected_lanes *= 2;
        CHECK(chunks.lanes() == expected_lanes, "B=%lld D=%lld: %d lanes per chunk, want %d", (long long)batch,
              (long long)dim, chunks.lanes(), expected_lanes);
        std::vector<int> taken(static_cast<size_t>(batch * dim), 0);
        std::vector<int> slots(static_cast<size_t>(batch * chunks.per_example), 0);
        const int per_warp = chunks.per_warp();
        for (int w = 0; w < warps_in_grid; ++w) {
          for (int64_t first = int64_t{w} * per_warp; first < chunks.count; first += int64_t{warps_in_grid} * per_warp) {
            for (int lane = 0; lane < 32; ++lane) {
              int j;
              const adt_fast::Chunk c = chunks.of_lane(first, lane, j);
              if (c.len == 0) continue;
              CHECK(c.start == c.example * dim + c.index * chunks.size() && c.len <= chunks.size() &&
                        c.index < chunks.per_example && c.start + c.len <= (c.example + 1) * dim,
                    "B=%lld D=%lld: chunk at %lld is not inside example %lld", (long long)batch, (long long)dim,
                    (long long)c.start, (long long)c.example);
              if (j == 0) ++slots[static_cast<size_t>(c.example * chunks.per_example + c.index)];
              for (int i = 0; i < per_lane; ++i) {
                const int at = j + chunks.lanes() * i;
                if (at < c.len) ++taken[static_cast<size_t>(c.start + at)];
              }
            }
          }
        }
        CHECK(std::all_of(taken.begin(), taken.end(), [](int t) { return t == 1; }),
              "B=%lld D=%lld: some element is not taken exactly once", (long long)batch, (long long)dim);
        CHECK(std::all_of(slots.begin(), slots.end(), [](int t) { return t == 1; }),
              "B=%lld D=%lld: some (example, chunk) sum is not written exactly once", (long long)batch, (long long)dim);
      }
    }
  }
}

}  // namespace

int main() {
  std::printf("adt_fast core tests (CPU kernels: %s; available: %s; OpenMP: %s, %d threads)\n",
              adt_fast::cpu::isa(), adt_fast::cpu::available_isas(), adt_fast::cpu::has_openmp() ? "yes" : "no",
              adt_fast::cpu::default_num_threads());
  test_philox_kat();
  test_words_entry_point();
  test_simd_philox_tiles();
  test_normals_mapping();
  test_primitives<float>("float", 4e-7);
  test_primitives<double>("double", 1e-15);
  test_device_float_pieces();
  test_kernels();
  test_extremes();
  test_empty();
  test_chunking();
  return adt_test::report();
}
