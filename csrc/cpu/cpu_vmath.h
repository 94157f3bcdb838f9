// The activations of the CPU kernels of both ops (GELU, its derivative, sigmoid), one implementation for
// scalars in `#pragma omp simd` loops and for the GEMM registers vreg<T> of cpu_gemm.h (epilogues):
//   float, vreg<float>   : fast branch-free forms: erf by a rational minimax fit (|error| < 5e-7 on GELU's
//                          argument range), exp by Cephes' polynomial (relative error < 1e-7);
//   double, vreg<double> : the exact std:: functions of eimn_math.h (gradcheck-exact), lane by lane.
// MOLRCM's at::vec loops reach these through to_vec / from_vec (molrcm_vec.h).
#pragma once
#include "cpu/cpu_isa.h"
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/cpu_gemm.h"
#include "common/eimn_math.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {

// Always inlined: called once per element or vector inside the kernels' loops, where GCC's own choice for the
// 64-byte forms, an out-of-line call, spills the loop's live vector registers around it, and where a call to the
// scalar form keeps a `#pragma omp simd` loop from being vectorised.
#define EIMN_VMATH_INLINE inline __attribute__((always_inline))

// ---- the two primitives that differ between a scalar and a vector register
inline float floor_f(float x) { return std::floor(x); }
// 2^n for an integral-valued n in the normal range (exponent bits).
inline float pow2_f(float n) {
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof(float));
  return s;
}
// The same two for a float vector V with its int32 vector VI (32- or 64-byte registers).
template <typename V, typename VI> EIMN_VMATH_INLINE V floor_vf(V x) {  // |x| < 2^31
  const V t = __builtin_convertvector(__builtin_convertvector(x, VI), V);
  return t > x ? t - 1.f : t;
}
template <typename V, typename VI> EIMN_VMATH_INLINE V pow2_vf(V n) {
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V s;
  std::memcpy(&s, &bits, sizeof(s));
  return s;
}
typedef int32_t vint32 __attribute__((vector_size(32)));
inline vreg<float> floor_f(vreg<float> x) { return floor_vf<vreg<float>, vint32>(x); }
inline vreg<float> pow2_f(vreg<float> n) { return pow2_vf<vreg<float>, vint32>(n); }

#if defined(__AVX512F__)
typedef int32_t xint32 __attribute__((vector_size(64)));
EIMN_VMATH_INLINE xreg<float> floor_f(xreg<float> x) { return floor_vf<xreg<float>, xint32>(x); }
EIMN_VMATH_INLINE xreg<float> pow2_f(xreg<float> n) { return pow2_vf<xreg<float>, xint32>(n); }
#endif

// ---- float algorithms, V = float or vreg<float> (V{} + c broadcasts a constant in both)
template <typename V> EIMN_VMATH_INLINE V clamp_f(V x, float lo, float hi) {
  const V l = V{} + lo, h = V{} + hi;
  return x < l ? l : (x > h ? h : x);
}

template <typename V> EIMN_VMATH_INLINE V erf_fast(V x) {
  x = clamp_f(x, -4.f, 4.f);
  const V x2 = x * x;
  V p = V{} - 2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  V q = V{} - 1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

template <typename V> EIMN_VMATH_INLINE V exp_fast(V x) {
  x = clamp_f(x, -87.3f, 88.3f);
  const V fx = floor_f(x * 1.44269504088896341f + 0.5f);
  x = x - fx * 0.693359375f;
  x = x + fx * 2.12194440e-4f;
  const V z = x * x;
  V y = V{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.f;
  return y * pow2_f(fx);
}

template <typename V> EIMN_VMATH_INLINE V gelu_fast(V x) { return 0.5f * x * (1.f + erf_fast(x * float(kInvSqrt2))); }
template <typename V> EIMN_VMATH_INLINE V gelu_grad_fast(V x) {
  return 0.5f * (1.f + erf_fast(x * float(kInvSqrt2))) + x * float(kInvSqrt2Pi) * exp_fast(-0.5f * x * x);
}
template <typename V> EIMN_VMATH_INLINE V sigmoid_fast(V x) { return 1.f / (1.f + exp_fast(-x)); }

// ---- the entry points: v_gelu, v_gelu_grad, v_sigmoid for T, vreg<T> (T = float: fast; double: exact)
inline float v_gelu(float x) { return gelu_fast(x); }
inline float v_gelu_grad(float x) { return gelu_grad_fast(x); }
inline float v_sigmoid(float x) { return sigmoid_fast(x); }
inline vreg<float> v_gelu(vreg<float> x) { return gelu_fast(x); }
inline vreg<float> v_gelu_grad(vreg<float> x) { return gelu_grad_fast(x); }
inline vreg<float> v_sigmoid(vreg<float> x) { return sigmoid_fast(x); }

#if defined(__AVX512F__)
// The 64-byte registers xreg<T> of AVX-512 (the depthwise and elementwise loops of the SADFFM kernels): the same
// expressions lane by lane, so every lane has the bits of the scalar and 32-byte forms.
EIMN_VMATH_INLINE xreg<float> v_gelu(xreg<float> x) { return gelu_fast(x); }
EIMN_VMATH_INLINE xreg<float> v_gelu_grad(xreg<float> x) { return gelu_grad_fast(x); }
EIMN_VMATH_INLINE xreg<float> v_sigmoid(xreg<float> x) { return sigmoid_fast(x); }
#endif
#if !defined(__AVX512F__)
// 64-byte float vectors at levels without AVX-512 (whole rows of the bf16 GEMM, cpu_gemm_bf16.h, which the
// epilogues written for whole rows take): the 32-byte forms on both halves, so each lane has the same bits.
typedef float f32x16_halves __attribute__((vector_size(64)));
template <typename F> inline f32x16_halves by_halves(f32x16_halves x, F f) {
  vreg<float> h[2];
  std::memcpy(h, &x, sizeof(x));
  h[0] = f(h[0]);
  h[1] = f(h[1]);
  std::memcpy(&x, h, sizeof(x));
  return x;
}
inline f32x16_halves v_gelu(f32x16_halves x) { return by_halves(x, [](vreg<float> v) { return gelu_fast(v); }); }
inline f32x16_halves v_sigmoid(f32x16_halves x) {
  return by_halves(x, [](vreg<float> v) { return sigmoid_fast(v); });
}
#endif
inline double v_gelu(double x) { return gelu(x); }
inline double v_gelu_grad(double x) { return gelu_grad(x); }
inline double v_sigmoid(double x) { return sigmoid(x); }
// f on every lane of a vector V of doubles (vreg<double> or, with AVX-512, xreg<double>).
template <typename V, typename F> inline V lanes_d(V x, F f) {
  for (int i = 0; i < int(sizeof(V) / sizeof(double)); ++i) x[i] = f(x[i]);
  return x;
}
inline vreg<double> v_gelu(vreg<double> x) { return lanes_d(x, [](double v) { return gelu(v); }); }
inline vreg<double> v_gelu_grad(vreg<double> x) { return lanes_d(x, [](double v) { return gelu_grad(v); }); }
inline vreg<double> v_sigmoid(vreg<double> x) { return lanes_d(x, [](double v) { return sigmoid(v); }); }
#if defined(__AVX512F__)
inline xreg<double> v_gelu(xreg<double> x) { return lanes_d(x, [](double v) { return gelu(v); }); }
inline xreg<double> v_gelu_grad(xreg<double> x) { return lanes_d(x, [](double v) { return gelu_grad(v); }); }
inline xreg<double> v_sigmoid(xreg<double> x) { return lanes_d(x, [](double v) { return sigmoid(v); }); }
#endif

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
