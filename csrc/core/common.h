// Shared macros and small helpers for the torch-free kernel core (host and device).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ADT_HD __host__ __device__
#define ADT_FN __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define ADT_HD
#define ADT_FN inline __attribute__((always_inline))
#else
#define ADT_HD
#define ADT_FN inline
#endif

// The device's arithmetic (CUDA's math functions, PTX's approximate instructions) instead of the
// host's branch-free polynomials: in CUDA device code, and in ctest core_cuda_emulated, which runs
// the CUDA kernels on the CPU with stand-ins for those instructions
// (csrc/tests/cuda_emulation/emulation.h).
// A function-like macro, so that `#if ADT_FAST_DEVICE_MATH()` in a header that forgot to include
// this one is a compile error instead of a silent host path on the device.
#if defined(__CUDA_ARCH__) || defined(ADT_FAST_EMULATE_DEVICE)
#define ADT_FAST_DEVICE_MATH() 1
#else
#define ADT_FAST_DEVICE_MATH() 0
#endif

namespace adt_fast {

// 0.5 * log(2 pi) and log(2): the constants of -log p (DESIGN §1).
constexpr double kLogSqrt2Pi = 0.91893853320467274178;
constexpr double kLog2 = 0.69314718055994530942;
// Philox draws four words per call; one call serves one sample of four consecutive elements (a quad).
constexpr int kElementsPerCall = 4;

// std::bit_cast for C++14/17 host and device code (memcpy compiles to a register move).
template <class To, class From>
ADT_FN To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// Number of quads (Philox counters per sample) that numel elements span.
ADT_FN int64_t num_quads(int64_t numel) { return (numel + kElementsPerCall - 1) / kElementsPerCall; }

}  // namespace adt_fast
