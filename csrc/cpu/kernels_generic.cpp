// The CPU kernels compiled for the generic instruction set (see kernels_impl.h).
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

#define ADT_ISA_NS isa_generic
#define ADT_ISA_NAME "generic"
#define ADT_ISA_LEVEL 0
#define ADT_TABLE_FN table_generic
#include "kernels_impl.h"
