// Internal: the per-ISA kernel tables of the CPU backend (see kernels_impl.h, cpu_api.cpp).
#pragma once

#include <cstdint>

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(ADT_FAST_NO_MULTIVERSION)
#define ADT_FAST_X86_MULTIVERSION 1
#endif

namespace adt_fast {
namespace cpu {
namespace detail {

template <class T>
struct ForwardArgs {
  const T* mean;
  const T* std_param;
  const T* x;
  const T* noise;
  T* out;
  uint64_t seed, offset;
  int64_t batch, dim, numel, num_samples;
  int64_t num_chunks;  // partial sums per example: partial[((b * num_chunks) + chunk) * k + s]
  T epsilon, lo, hi;
};

template <class T>
struct BackwardArgs {
  const T* grad_out;  // null: zero
  int64_t go_sample_stride, go_element_stride;
  const T* grad_nlp;  // null: zero; element (s, b) at s * ge_sample_stride + b * ge_example_stride
  int64_t ge_sample_stride, ge_example_stride;
  const T* mean;
  const T* std_param;
  const T* x;
  const T* noise;
  T* grad_mean;
  T* grad_std_param;
  T* grad_x;  // null: not wanted (x still masks the other gradients)
  uint64_t seed, offset;
  int64_t batch, dim, numel, num_samples;
  T epsilon, lo, hi;
};

// Each function processes the flat element range [n_begin, n_end).
template <class T>
using ForwardFn = void (*)(const ForwardArgs<T>&, int64_t n_begin, int64_t n_end, int64_t chunk,
                           double* partial);
template <class T>
using BackwardFn = void (*)(const BackwardArgs<T>&, int64_t n_begin, int64_t n_end);
// Words of the quads [q_begin, q_end) of every sample into out, shaped [num_samples, quads, 4].
using WordsFn = void (*)(uint64_t seed, uint64_t offset, int64_t quads, int64_t num_samples, int64_t q_begin,
                         int64_t q_end, int64_t* out);
// Philox words of quads [q0, q0 + len) for counter high half ctr (tests).
using PhiloxTileFn = void (*)(uint64_t seed, uint64_t ctr, uint64_t q0, int len, uint32_t* w0, uint32_t* w1,
                              uint32_t* w2, uint32_t* w3);

struct KernelTable {
  const char* name;
  ForwardFn<float> forward_f32[2][2];  // [has noise][has x]
  ForwardFn<double> forward_f64[2][2];
  BackwardFn<float> backward_f32[2][2];
  BackwardFn<double> backward_f64[2][2];
  WordsFn words;
  PhiloxTileFn philox_tile;
};

const KernelTable& table_generic();
#if defined(ADT_FAST_X86_MULTIVERSION)
const KernelTable& table_avx2();
const KernelTable& table_avx512();
#endif

}  // namespace detail
}  // namespace cpu
}  // namespace adt_fast
