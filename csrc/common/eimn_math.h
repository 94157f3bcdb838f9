// Scalar math shared by the CPU and CUDA kernels (same formulas on both sides).
#pragma once
#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EIMN_HD __host__ __device__ __forceinline__
#else
#define EIMN_HD inline
#endif

namespace eimn {

// Accumulation type: float for half/bfloat16/float, double for double.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/sqrt(2*pi)

// Exact (erf) GELU and its derivative.
template <typename T> EIMN_HD T gelu(T x) { return T(0.5) * x * (T(1) + erf(x * T(kInvSqrt2))); }
template <typename T> EIMN_HD T gelu_grad(T x) {
  return T(0.5) * (T(1) + erf(x * T(kInvSqrt2))) + x * T(kInvSqrt2Pi) * exp(T(-0.5) * x * x);
}
template <typename T> EIMN_HD T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
template <typename T> EIMN_HD T silu(T x) { return x * sigmoid(x); }
// d silu / dx = s * (1 + x * (1 - s)), s = sigmoid(x)
template <typename T> EIMN_HD T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

}  // namespace eimn
