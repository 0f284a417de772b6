// Stand-in for cuda_fp16.h on the CPU (see emulation.h): __half over the compiler's _Float16, whose
// conversion from float rounds to nearest even, as __float2half_rn does.
#pragma once

#include "emulation.h"

struct __half {
  _Float16 value;
};

inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
