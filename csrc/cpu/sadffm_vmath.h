// Vectorisable scalar math for the SADFFM CPU kernels (inline, branch-free, so `#pragma omp simd` loops
// vectorise). float: fast erf (rational, |err| < 5e-7) and exp (Cephes, rel err < 1e-7);
// double: the exact std:: functions of eimn_math.h (gradcheck-exact).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "eimn_math.h"

namespace eimn {
namespace sadffm {

inline float erf_fast(float x) {
  x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

inline float exp_fast(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float fx = std::floor(x * 1.44269504088896341f + 0.5f);
  x = x - fx * 0.693359375f;
  x = x + fx * 2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.f;
  const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return y * scale;
}

// GELU (exact erf form), its derivative, sigmoid: float uses the fast vectorisable forms.
template <typename T> inline T v_gelu(T x) { return gelu(x); }
template <typename T> inline T v_gelu_grad(T x) { return gelu_grad(x); }
template <typename T> inline T v_sigmoid(T x) { return sigmoid(x); }
template <> inline float v_gelu<float>(float x) { return 0.5f * x * (1.f + erf_fast(x * float(kInvSqrt2))); }
template <> inline float v_gelu_grad<float>(float x) {
  return 0.5f * (1.f + erf_fast(x * float(kInvSqrt2))) + x * float(kInvSqrt2Pi) * exp_fast(-0.5f * x * x);
}
template <> inline float v_sigmoid<float>(float x) { return 1.f / (1.f + exp_fast(-x)); }

}  // namespace sadffm
}  // namespace eimn
