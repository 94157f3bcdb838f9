// Pixel tiles of the CPU 1x1-convolution ops (MOLRCM's proj_qv / gate_out, conv1x1) and the row sums of a tile.
#pragma once
#include "cpu/cpu_isa.h"
#include <algorithm>
#include <cstdint>

namespace eimn::cpu {
inline namespace EIMN_ISA {

// Pixels per tile for the 1x1-conv ops: <= 512 (tile buffers stay in L2), smaller for small inputs so
// that there are ~16 tasks. Independent of the thread count, so the per-task weight-gradient partials,
// and hence the results, are bitwise the same for any number of threads.
inline int64_t pixel_tile(int64_t HW, int64_t N) {
  int64_t P = 512;
  const int64_t want = 16;
  while (P > 64 && N * ((HW + P - 1) / P) < want) P /= 2;
  return std::min(P, HW);
}

// Row sums of a (R x P) block (row stride ld) into double out[r] (+=).
template <typename T>
void row_sums(const T* a, int64_t R, int64_t P, int64_t ld, double* out) {
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict p = a + r * ld;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < P; ++i) s += p[i];
    out[r] += s;
  }
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
