// The CPU kernels compiled for the avx512 instruction set (see kernels_impl.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../core/elementwise.h"
#include "../core/philox.h"
#include "kernels.h"

#if defined(ADT_FAST_X86_MULTIVERSION)
#include <immintrin.h>
#endif

#if defined(ADT_FAST_X86_MULTIVERSION)
// Every header is included above, so only the kernels below get the target attribute; the inline
// helpers they call are inlined into them and compiled for this target.
#pragma GCC push_options
// GCC 12 warns about the intrinsics' own _mm*_undefined_* placeholders: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi2")
#define ADT_ISA_NS isa_avx512
#define ADT_ISA_NAME "avx512"
#define ADT_ISA_LEVEL 2
#define ADT_TABLE_FN table_avx512
#include "kernels_impl.h"
#pragma GCC pop_options
#endif
