// CPU helpers for the MOLRCM kernels: at::vec::Vectorized loops, and the activations of cpu_vmath.h on them.
#pragma once
// The extension is compiled with -march=native; on AVX2+FMA machines use ATen's AVX2 Vectorized<T>
// instead of the scalar fallback. CPU_CAPABILITY names the
// inline namespace of Vectorized: a name of our own, so other translation units of the extension that
// include ATen's vec headers without AVX2 get distinct symbols (no ODR clash).
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512) && \
    !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY eimn_molrcm_avx2
#endif
#include "cpu/cpu_isa.h"
#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <cstdint>

#include "cpu/cpu_gemm.h"
#include "cpu/cpu_vmath.h"
#include "common/eimn_math.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace molrcm {

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

// The shared activations (cpu_vmath.h) on Vectorized values.
template <typename T> inline Vec<T> vgelu_grad(Vec<T> x) { return to_vec<T>(v_gelu_grad(from_vec<T>(x))); }
template <typename T> inline Vec<T> vsigmoid(Vec<T> x) { return to_vec<T>(v_sigmoid(from_vec<T>(x))); }

}  // namespace molrcm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
