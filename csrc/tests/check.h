// What the two C++ test programs share: a counting CHECK and the norm-wise relative error.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

namespace adt_test {

inline int g_failures = 0;
inline int g_checks = 0;

// Norm-wise relative error: max |a - b| / max |b| (the same measure as tests/test_ops.py).
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return b.empty() ? 0.0 : num / std::max(den, 1e-300);
}

// "N checks, M failures" and the exit status ctest reads.
inline int report() {
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace adt_test

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    ++adt_test::g_checks;                                                  \
    if (!(cond)) {                                                         \
      ++adt_test::g_failures;                                              \
      std::printf("FAIL %s:%d: %s -- ", __FILE__, __LINE__, #cond);        \
      std::printf(__VA_ARGS__);                                            \
      std::printf("\n");                                                   \
    }                                                                      \
  } while (0)
