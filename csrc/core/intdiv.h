// n / d by a multiply-high and a shift, for 0 <= n < 2^31 and 1 <= d < 2^31 (Granlund and
// Montgomery, PLDI'94; the form of torch's IntDivider<unsigned int>): the CUDA kernels find each
// element's example with it instead of a 64-bit division (tens of instructions). Host and device.
#pragma once

#include "common.h"

namespace adt_fast {

struct FastDivider {
  uint32_t divisor = 1;
  uint32_t magic = 0;
  uint32_t shift = 0;

  FastDivider() = default;
  explicit FastDivider(uint32_t d) : divisor(d) {
    while (shift < 32 && (uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }

  ADT_FN uint32_t div(uint32_t n) const {
#if ADT_FAST_DEVICE_MATH()
    const uint32_t t = __umulhi(n, magic);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * magic) >> 32);
#endif
    return (t + n) >> shift;
  }
};

}  // namespace adt_fast
