// Channel LayerNorm statistics of a tile of pixels of an NCHW image and the normalisation with them, shared by the
// CPU kernels of the channel LayerNorm op (channel_norm_cpu.cpp) and of the DFFM gate (sadffm_cpu.cpp): the same
// two-pass arithmetic in both.
#pragma once
#include "cpu/cpu_isa.h"
#include <cmath>
#include <cstdint>

namespace eimn::cpu {
inline namespace EIMN_ISA {

// Pixels [0, P) of C channel rows x[c * ld + p]: mu[p] = mean_c x, rstd[p] = 1 / sqrt(mean_c (x - mu)^2 + eps)
// (two passes: the mean first, then the centred squares; channel order fixed).
template <typename T>
inline void channel_stats(const T* x, int64_t ld, int C, int64_t P, T eps, T* mu, T* rstd) {
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) mu[p] = 0;
  for (int c = 0; c < C; ++c) {
    const T* xc = x + c * ld;
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) mu[p] += xc[p];
  }
  const T invC = T(1) / T(C);
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) { mu[p] *= invC; rstd[p] = 0; }
  for (int c = 0; c < C; ++c) {
    const T* xc = x + c * ld;
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) { const T d = xc[p] - mu[p]; rstd[p] += d * d; }
  }
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) rstd[p] = T(1) / std::sqrt(rstd[p] * invC + eps);
}

// y[c * ldy + p] = (x[c * ldx + p] - mu[p]) * rstd[p] * w[c] + b[c] for pixels [0, P) of C channel rows: the
// normalisation after channel_stats (the LayerNorm op's forward, the EIMN block tail in the DFFM gate pass).
template <typename T>
inline void channel_norm_apply(const T* x, int64_t ldx, int C, int64_t P, const T* mu, const T* rstd, const T* w,
                               const T* b, T* y, int64_t ldy) {
  for (int c = 0; c < C; ++c) {
    const T* xc = x + c * ldx;
    T* yc = y + c * ldy;
    const T wc = w[c], bc = b[c];
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) yc[p] = (xc[p] - mu[p]) * rstd[p] * wc + bc;
  }
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
