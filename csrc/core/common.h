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

namespace adt_fast {

// 0.5 * log(2 pi) and log(2): the constants of -log p (DESIGN §1).
constexpr double kLogSqrt2Pi = 0.91893853320467274178;
constexpr double kLog2 = 0.69314718055994530942;
// Philox draws four words per call; one call serves four samples of an element.
constexpr int kSamplesPerCall = 4;

// std::bit_cast for C++14/17 host and device code (memcpy compiles to a register move).
template <class To, class From>
ADT_FN To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// Number of Philox calls (sample groups) that k samples need.
ADT_FN int64_t num_groups(int64_t k) { return (k + kSamplesPerCall - 1) / kSamplesPerCall; }

}  // namespace adt_fast
