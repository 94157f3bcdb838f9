// Fixed-order sums of per-task partials, shared by the CPU kernels of both ops: the weight-gradient partials of
// a backward are written per task (or per fixed chunk of tasks) and then summed task by task, so the result does
// not depend on the number of threads.
#pragma once
#include "cpu/cpu_isa.h"
#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Parallel.h>

namespace eimn::cpu {
inline namespace EIMN_ISA {

// out[e] = Out(sum over rows k = 0, 1, ..., rows-1 of Acc(parts[k * stride + e])) for e < n: each element summed
// from zero in row order, in an Acc accumulator. The rows are read contiguously and the elements split over the
// threads (a loop over k per element would read with stride `stride`). out may be parts itself (row 0).
template <typename Acc, typename P, typename Out>
void sum_rows(const P* parts, int64_t rows, int64_t stride, int64_t n, Out* out) {
  at::parallel_for(0, n, 4096, [&](int64_t e0, int64_t e1) {
    std::vector<Acc> acc(size_t(e1 - e0), Acc(0));
    for (int64_t k = 0; k < rows; ++k) {
      const P* src = parts + k * stride + e0;
#pragma omp simd
      for (int64_t e = 0; e < e1 - e0; ++e) acc[e] += Acc(src[e]);
    }
    for (int64_t e = e0; e < e1; ++e) out[e] = Out(acc[e - e0]);
  });
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
