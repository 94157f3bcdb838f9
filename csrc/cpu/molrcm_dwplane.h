// Single-plane depthwise (dilated, 'same' padded) convolution kernels on zero-padded buffers.
// A "padded source" pointer addresses element (-P, -P) of a plane whose border of P = d*(K-1)/2
// rows/columns is zero, so the inner loops need no bounds checks and vectorise over W.
#pragma once
#include "cpu/cpu_isa.h"
#include "cpu/cpu_stream.h"
#include <algorithm>
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

// dilated_dw_plane (dst = bias + taps; not +=) with rows y and y + d computed together: row y + d's kernel row ky
// reads the source row of row y's kernel row ky + 1, so each source vector loaded feeds two FMAs, and both rows'
// sums stay in registers over all taps (dilated_dw_plane_k loads and stores its output row once per kernel row).
// Column blocks of kDwBlock vectors; the columns past the last whole block go through dilated_dw_plane_k, whose
// loop over a row's pixels keeps the FMAs independent (single vectors here would wait on each sum's latency:
// dw_mix at 1x32x56x56 ran 0.92x). Every output is the same chain of FMAs as there (bias, then the taps by kernel
// row, then column): the same bits. stream: the blocks' stores are streaming where aligned (cpu_stream.h).
#if defined(__AVX512F__)
constexpr int kDwVecBytes = 64;
#else
constexpr int kDwVecBytes = 32;
#endif
constexpr int kDwBlock = 4;  // vectors per column block: 2 x 4 independent sums hide the FMA latency
template <typename T, int K, int XB, bool Two>
__attribute__((always_inline)) inline void dw_rowpair_cols(const T* __restrict src, int64_t lds, int64_t y,
                                                           const T* __restrict w, int64_t d, T bias, T* dst,
                                                           int64_t ldd, int64_t x, bool stream) {
  typedef T V __attribute__((vector_size(kDwVecBytes)));
  constexpr int L = kDwVecBytes / sizeof(T);
  // x on every lane (x - 0 is exact for every x, so GCC folds it to one broadcast; 0 + x is not: -0 + 0 = +0)
  auto splat = [](T x) __attribute__((always_inline)) { return x - V{}; };
  V a[XB], b[XB];
#pragma GCC unroll 8
  for (int i = 0; i < XB; ++i) a[i] = b[i] = splat(bias);
#pragma GCC unroll 8
  for (int j = 0; j <= K; ++j) {  // source row y + j * d: kernel row j of row y, j - 1 of row y + d
    if (!Two && j == K) break;
    const T* s = src + (y + j * d) * lds + x;
#pragma GCC unroll 9
    for (int kx = 0; kx < K; ++kx) {
      V sv[XB];
#pragma GCC unroll 8
      for (int i = 0; i < XB; ++i) {
        sv[i] = load_vec<V>(s + kx * d + i * L);
        asm("" : "+v"(sv[i]));  // in a register: GCC would fold the load into both FMAs (two loads)
      }
      if (j < K) {
        const V wa = splat(w[j * K + kx]);
#pragma GCC unroll 8
        for (int i = 0; i < XB; ++i) a[i] += wa * sv[i];
      }
      if (Two && j > 0) {
        const V wb = splat(w[(j - 1) * K + kx]);
#pragma GCC unroll 8
        for (int i = 0; i < XB; ++i) b[i] += wb * sv[i];
      }
    }
  }
  T* d0 = dst + y * ldd + x;
  T* d1 = dst + (y + d) * ldd + x;
  auto aligned = [](const T* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0; };
  if (stream && aligned(d0) && (!Two || aligned(d1))) {
#pragma GCC unroll 8
    for (int i = 0; i < XB; ++i) {
      stream_vec(d0 + i * L, a[i]);
      if (Two) stream_vec(d1 + i * L, b[i]);
    }
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < XB; ++i) {
    store_vec(d0 + i * L, a[i]);
    if (Two) store_vec(d1 + i * L, b[i]);
  }
}

template <typename T, int K>
inline void dw_plane_rowpairs(const T* src, int64_t lds, int64_t H, int64_t W, const T* w, int64_t d, T bias,
                              T* dst, int64_t ldd, bool stream) {
  constexpr int64_t XW = kDwBlock * (kDwVecBytes / sizeof(T));  // pixels per column block
  const int64_t Wb = W / XW * XW;
  for (int64_t g = 0; g < H; g += 2 * d)  // rows [g, g + d) pair with [g + d, g + 2d)
    for (int64_t y = g; y < std::min(H, g + d); ++y)
      for (int64_t x = 0; x < Wb; x += XW) {
        if (y + d < H) dw_rowpair_cols<T, K, kDwBlock, true>(src, lds, y, w, d, bias, dst, ldd, x, stream);
        else dw_rowpair_cols<T, K, kDwBlock, false>(src, lds, y, w, d, bias, dst, ldd, x, stream);
      }
  if (Wb < W) dilated_dw_plane_k<T, K>(src + Wb, lds, H, W - Wb, w, K, d, bias, dst + Wb, ldd);
}

template <typename T>
inline void dilated_dw_plane(const T* src, int64_t lds, int64_t H, int64_t W, const T* w, int K, int64_t d, T bias,
                     T* dst, int64_t ldd, bool stream = false) {
  switch (K) {
    case 1: return dilated_dw_plane_k<T, 1>(src, lds, H, W, w, K, d, bias, dst, ldd);
    case 3: return dw_plane_rowpairs<T, 3>(src, lds, H, W, w, d, bias, dst, ldd, stream);
    case 5: return dw_plane_rowpairs<T, 5>(src, lds, H, W, w, d, bias, dst, ldd, stream);
    case 7: return dw_plane_rowpairs<T, 7>(src, lds, H, W, w, d, bias, dst, ldd, stream);
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
