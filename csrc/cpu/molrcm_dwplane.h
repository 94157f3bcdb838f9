// Single-plane depthwise (dilated, 'same' padded) convolution kernels on zero-padded buffers.
// A "padded source" pointer addresses element (-P, -P) of a plane whose border of P = d*(K-1)/2
// rows/columns is zero, so the inner loops need no bounds checks and vectorise over W.
#pragma once
#include "cpu/cpu_isa.h"
#include <cstdint>

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace molrcm {

// dw_plane_wgrad's row dot products stay in 32-byte vectors (out of line, so its callers' preference does not
// apply): with 64-byte ones (-mprefer-vector-width=512, setup.py) the per-row horizontal sums of 49 taps made the
// MOLRCM dw_mix backward 8% slower at 4x64x64x64; the results are the same bits as before that flag.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EIMN_VEC256 __attribute__((target("prefer-vector-width=256"), noinline))
#else
#define EIMN_VEC256
#endif

// dst[y][x] (+)= bias + sum_{ky,kx} w[ky*K+kx] * src[(y+ky*d)*lds + x+kx*d]; y < H, x < W.
template <typename T, int KC>
inline void dilated_dw_plane_k(const T* __restrict src, int64_t lds, int64_t H, int64_t W, const T* __restrict w,
                       int K_rt, int64_t d, T bias, T* __restrict dst, int64_t ldd) {
  const int K = KC > 0 ? KC : K_rt;
  for (int64_t y = 0; y < H; ++y) {
    T* __restrict o = dst + y * ldd;
    for (int64_t x = 0; x < W; ++x) o[x] = bias;
    for (int ky = 0; ky < K; ++ky) {
      const T* __restrict s = src + (y + ky * d) * lds;
      const T* wr = w + ky * K;
      if constexpr (KC > 0) {
        T wk[KC];
        for (int kx = 0; kx < KC; ++kx) wk[kx] = wr[kx];
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          T acc = o[x];
          for (int kx = 0; kx < KC; ++kx) acc += wk[kx] * s[x + kx * d];
          o[x] = acc;
        }
      } else {
        for (int kx = 0; kx < K; ++kx) {
          const T wv = wr[kx];
          const T* __restrict sk = s + kx * d;
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) o[x] += wv * sk[x];
        }
      }
    }
  }
}

template <typename T>
inline void dilated_dw_plane(const T* src, int64_t lds, int64_t H, int64_t W, const T* w, int K, int64_t d, T bias,
                     T* dst, int64_t ldd) {
  switch (K) {
    case 1: return dilated_dw_plane_k<T, 1>(src, lds, H, W, w, K, d, bias, dst, ldd);
    case 3: return dilated_dw_plane_k<T, 3>(src, lds, H, W, w, K, d, bias, dst, ldd);
    case 5: return dilated_dw_plane_k<T, 5>(src, lds, H, W, w, K, d, bias, dst, ldd);
    case 7: return dilated_dw_plane_k<T, 7>(src, lds, H, W, w, K, d, bias, dst, ldd);
    case 9: return dilated_dw_plane_k<T, 9>(src, lds, H, W, w, K, d, bias, dst, ldd);
    default: return dilated_dw_plane_k<T, 0>(src, lds, H, W, w, K, d, bias, dst, ldd);
  }
}

// Weight and bias gradients of one plane: gw[ky*K+kx] += sum_{y,x} g[y][x] * src[(y+ky*d)*lds + x+kx*d],
// gb += sum g. Row dot products in T, accumulated over rows in double.
template <typename T>
EIMN_VEC256 void dw_plane_wgrad(const T* src, int64_t lds, int64_t H, int64_t W, const T* g, int64_t ldg, int K,
                           int64_t d, double* gw, double* gb) {
  double bsum = 0;
  for (int64_t y = 0; y < H; ++y) {
    const T* __restrict gr = g + y * ldg;
    T rs = 0;
#pragma omp simd reduction(+ : rs)
    for (int64_t x = 0; x < W; ++x) rs += gr[x];
    bsum += rs;
    for (int ky = 0; ky < K; ++ky) {
      const T* s = src + (y + ky * d) * lds;
      for (int kx = 0; kx < K; ++kx) {
        const T* __restrict sk = s + kx * d;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t x = 0; x < W; ++x) acc += gr[x] * sk[x];
        gw[ky * K + kx] += acc;
      }
    }
  }
  *gb += bsum;
}

}  // namespace molrcm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
