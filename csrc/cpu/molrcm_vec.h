// CPU helpers for the MOLRCM kernels: vectorised activations (at::vec::Vectorized).
#pragma once
// The extension is compiled with -march=native; on AVX2+FMA machines use ATen's AVX2 Vectorized<T>
// (erf/exp via SLEEF, exported by libtorch_cpu) instead of the scalar fallback. CPU_CAPABILITY names the
// inline namespace of Vectorized: a name of our own, so other translation units of the extension that
// include ATen's vec headers without AVX2 get distinct symbols (no ODR clash).
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512) && \
    !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY eimn_molrcm_avx2
#endif
#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <cstdint>

#include "cpu_gemm.h"
#include "eimn_math.h"

namespace eimn {
namespace cpu {

template <typename T> using Vec = at::vec::Vectorized<T>;

// Calls op(i, cnt) over [0, n) in vector-sized pieces (the last one partial); op loads with
// Vec<T>::loadu(p + i, cnt) and stores with v.store(p + i, cnt).
template <typename T, typename Op>
inline void vec_for(int64_t n, Op op) {
  constexpr int64_t L = Vec<T>::size();
  int64_t i = 0;
  for (; i + L <= n; i += L) op(i, L);
  if (i < n) op(i, n - i);
}

template <typename T> inline Vec<T> vgelu(Vec<T> x) {
  return x * Vec<T>(T(0.5)) * (Vec<T>(T(1)) + (x * Vec<T>(T(kInvSqrt2))).erf());
}
template <typename T> inline Vec<T> vgelu_grad(Vec<T> x) {
  Vec<T> cdf = Vec<T>(T(0.5)) * (Vec<T>(T(1)) + (x * Vec<T>(T(kInvSqrt2))).erf());
  Vec<T> pdf = (x * x * Vec<T>(T(-0.5))).exp() * Vec<T>(T(kInvSqrt2Pi));
  return cdf + x * pdf;
}
template <typename T> inline Vec<T> vsigmoid(Vec<T> x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

// Forward-only fast variants for float: exp via ATen's inline exp_u20 (<= 20 ulp, no SLEEF call, so
// the GEMM epilogues keep their registers); erf by the same Abramowitz-Stegun 7.1.26 formula ATen's
// AVX2 erf uses (|error| <= 1.5e-7). double keeps the accurate exp/erf (fp64 golden checks).
template <typename T> inline Vec<T> vexp_fwd(Vec<T> x) { return x.exp(); }
template <> inline Vec<float> vexp_fwd<float>(Vec<float> x) { return x.exp_u20(); }

template <typename T> inline Vec<T> verf_fwd(Vec<T> x) { return x.erf(); }
template <> inline Vec<float> verf_fwd<float>(Vec<float> x) {
  using V = Vec<float>;
  const V ax = x.abs();
  const V t = V(1.f) / at::vec::fmadd(V(0.3275911f), ax, V(1.f));
  V r = at::vec::fmadd(V(1.061405429f), t, V(-1.453152027f));
  r = at::vec::fmadd(r, t, V(1.421413741f));
  r = at::vec::fmadd(r, t, V(-0.284496736f));
  r = at::vec::fmadd(r, t, V(0.254829592f));
  const V e = vexp_fwd<float>((x * x).neg());
  const V y = V(1.f) - r * t * e;  // erf(|x|)
  return y ^ (x & V(-0.f));  // sign of x
}

template <typename T> inline Vec<T> vgelu_fwd(Vec<T> x) {
  return x * Vec<T>(T(0.5)) * (Vec<T>(T(1)) + verf_fwd<T>(x * Vec<T>(T(kInvSqrt2))));
}
template <typename T> inline Vec<T> vsigmoid_fwd(Vec<T> x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + vexp_fwd<T>(x.neg()));
}

// Conversions between the GEMM registers (cpu_gemm.h) and at::vec::Vectorized (same 32 bytes), for the
// activation epilogues of the fused 1x1 convolutions.
template <typename T> inline Vec<T> to_vec(vreg<T> v) {
  static_assert(Vec<T>::size() * sizeof(T) == 32, "Vectorized must be 32 bytes");
  return Vec<T>::loadu(&v);
}
template <typename T> inline vreg<T> from_vec(Vec<T> v) {
  vreg<T> r;
  v.store(&r);
  return r;
}

}  // namespace cpu
}  // namespace eimn
