// The per-element maths of the tanh-Gaussian op (DESIGN §1), shared by the CPU and CUDA kernels.
// Templated on the compute type: float (for float, half and bfloat16 storage) or double.
// Every function is branch-free (selects only), so the CPU loops vectorise.
//
//   sigma = softplus(rho),  u = mu + sigma r,  t = tanh(u),  delta = eps t
//   -log p = r^2/2 + log sigma + log(1 - t^2) + [log(2 pi)/2 + log eps]   (per element)
//
// These follow adt_fast/ops/reference.py exactly (not torch's threshold=20 softplus):
//   softplus(rho)      = max(rho, 0) + log1p(exp(-|rho|))
//   log softplus(rho)  = rho - exp(rho)/2 for rho < -20, else log(softplus(rho))
//   sigmoid/softplus   = 1 - exp(rho)/2 for rho < -20, else sigmoid(rho) / softplus(rho)
//   log(1 - t^2)       = 2 log 2 + log2((1 - t^2) / 4) log 2, log2((1 - t^2) / 4) = -2|u| log2(e)
//                        - 2 log2(1 + e), finite for any finite u
//   1 - t^2            = 4 e / (1 + e)^2 with e = exp(-2|u|)    (exact in relative terms)
//   tanh|u|            = (1 - e) / (1 + e), 1 - e = -expm1(-2|u|) on the host (accurate for tiny
//                        |u|); the device's float path uses one ex2.approx (docs/kernels.md)
#pragma once

#include "common.h"
#include "fastmath.h"

namespace adt_fast {

constexpr double kLogSoftplusTail = -20.0;

template <class T>
struct RhoGrads {
  T sigmoid;                // sigmoid(rho) = d sigma / d rho
  T sigmoid_over_softplus;  // d log sigma / d rho
};

template <class T>
struct RhoTerms {
  T sigma;      // softplus(rho)
  T log_sigma;  // log softplus(rho)
  RhoGrads<T> grads;
};

// Whether rho is in softplus's tail, where log sigma and d log sigma / d rho take their series.
template <class T>
ADT_FN bool softplus_tail(T rho) {
  return rho < T(kLogSoftplusTail);
}

// softplus(rho) kept at or above the smallest normal, for the log and the division outside the
// tail (only tail lanes, whose results are then discarded, ever need the floor).
template <class T>
ADT_FN T softplus_floored(T sp) {
  const T min_normal = math::Traits<T>::kMinNormal;
  return sp > min_normal ? sp : min_normal;
}

// The derivatives from rho, e = exp(-|rho|) and sp = softplus(rho): a kernel that holds sigma
// needs only the exponential again, not the log1p.
template <class T>
ADT_FN RhoGrads<T> rho_grads(T rho, T e, T sp) {
  const T inv = math::rcp_(T(1) + e);
  RhoGrads<T> out;
  out.sigmoid = rho >= T(0) ? inv : e * inv;
  out.sigmoid_over_softplus = softplus_tail(rho) ? T(1) - T(0.5) * e : math::div_(out.sigmoid, softplus_floored(sp));
  return out;
}

template <class T>
ADT_FN T softplus_from(T rho, T e) {  // softplus(rho) from e = exp(-|rho|)
  return (rho > T(0) ? rho : T(0)) + math::log1p_unit(e);
}

template <class T>
ADT_FN RhoTerms<T> rho_terms(T rho) {
  const T e = math::exp_neg_abs(rho);  // exp(-|rho|) in (0, 1]; = exp(rho) where rho < 0
  const T sp = softplus_from(rho, e);
  RhoTerms<T> out;
  out.sigma = sp;
  out.log_sigma = softplus_tail(rho) ? rho - T(0.5) * e : math::log_abs_err(softplus_floored(sp));
  out.grads = rho_grads(rho, e, sp);
  return out;
}

template <class T>
struct TanhTerms {
  T t;                   // tanh(u)
  T quarter_dtanh;       // (1 - tanh(u)^2) / 4
  T log2_quarter_dtanh;  // log2((1 - t^2) / 4) = log2(e) - 2 log2(1 + e), e = exp(-2|u|)
};

template <class T>
ADT_FN TanhTerms<T> tanh_terms(T u) {
  const T a = math::abs_(u);
  T e, one_minus_e;
  math::exp_neg2(a, e, one_minus_e);  // e = exp(-2|u|) and 1 - e: the sample's one exponential
  const T den = T(2) - one_minus_e;   // 1 + e
  const T rden = math::rcp_(den);
  TanhTerms<T> out;
  out.t = math::with_sign_of(one_minus_e * rden, u);
  out.quarter_dtanh = e * rden * rden;
  // log2(1 + e) = log2(den): den carries 1 + e to a relative rounding, so the log is as accurate
  // in absolute terms as log1p (what matters once added to log2(e) = -2|u| log2(e)).
  out.log2_quarter_dtanh = math::fma_(T(-2), math::log2_1to2(den), math::log2_exp_neg2(a));
  return out;
}

// acc + 2 (r^2/2 + log(1 - t^2)) - 4 log 2 = acc + r^2 + 2 log 2 log2((1 - t^2) / 4), from r and
// TanhTerms::log2_quarter_dtanh: the sample's term of -log p doubled and less its constant, two
// fused multiply-adds on the device (with the log2 of exp(-2|u|) that ex2 took). The CUDA forward
// sums these and halves the sum once. (Scalars, not the struct by reference: a reference to a
// loop-local struct stops g++ vectorising the CPU loops.)
template <class T>
ADT_FN T add_doubled_sample_term(T acc, T r, T log2_quarter_dtanh) {
  acc = r * r + acc;
  return T(2 * kLog2) * log2_quarter_dtanh + acc;
}

// The per-element, per-sample term of -log p: r^2/2 + log(1 - t^2) + log sigma.
template <class T>
ADT_FN T neg_log_prob_term(T r, T log_sigma, T log2_quarter_dtanh) {
  return T(0.5) * add_doubled_sample_term(T(0), r, log2_quarter_dtanh) + (log_sigma + T(2 * kLog2));
}

// The constant of -log p per example: D (log(2 pi)/2 + log eps), in double.
inline double neg_log_prob_constant(int64_t dim, double epsilon) {
  return (kLogSqrt2Pi + std::log(epsilon)) * static_cast<double>(dim);
}

}  // namespace adt_fast
