// CPU helpers for the MOLRCM kernels: vectorised activations (at::vec) and strided GEMM on raw pointers.
#pragma once
// The extension is compiled with -march=native; on AVX2+FMA machines use ATen's AVX2 Vectorized<T>
// (erf/exp via SLEEF, exported by libtorch_cpu) instead of the scalar fallback.
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <cstdint>

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

// Row-major C(MxN, ldc) = A(MxK) B(KxN) (+ C if accumulate). A and B are given by element strides
// (row stride, column stride), so transposed views need no copy; one of each pair must be 1.
// Runs BLAS single-threaded when called inside a parallel region.
template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
                 int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, bool accumulate) {
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, {a_rs, a_cs}, opt);
  at::Tensor b = at::from_blob(const_cast<T*>(B), {K, N}, {b_rs, b_cs}, opt);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opt);
  if (accumulate) {
    at::addmm_out(c, c, a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

}  // namespace cpu
}  // namespace eimn
