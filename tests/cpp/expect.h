// The C++ unit tests' check macro: counts passes and failures, prints each failure; each test
// program ends with report().
#pragma once
#include <cstdio>

inline int g_pass = 0, g_fail = 0;
#define EXPECT(cond)                                              \
  do {                                                            \
    if (cond) {                                                   \
      g_pass++;                                                   \
    } else {                                                      \
      g_fail++;                                                   \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                             \
  } while (0)

// Prints "N passed, M failed" (what tests/test_cpp_units.py reads); the exit status.
inline int report() {
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
