// Register-blocked GEMM micro-kernels for the MOLRCM 1x1 convolutions (small channel counts, many
// pixels), written with at::vec::Vectorized so they use AVX2/AVX-512 FMAs. MKL's sgemm is slow on
// non-Intel CPUs and costs a call overhead per pixel tile; these kernels need no packing of pixels.
#pragma once
#include "molrcm_vec.h"

#include <algorithm>
#include <vector>

namespace eimn {
namespace cpu {

// Pack a small (M x K) matrix A, given by element strides, as ap[k * M + m] = A[m][k].
template <typename T>
inline std::vector<T> pack_a(const T* A, int64_t M, int64_t K, int64_t rs, int64_t cs) {
  std::vector<T> ap(M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) ap[k * M + m] = A[m * rs + k * cs];
  return ap;
}

// C[m][p] (= or +=) sum_k A[m][k] * Bp[k][p] for m in [m0, m0+MR), p < np <= 2 * L. Bp is a packed
// panel: K rows of 2 * L contiguous values (zero-padded past np).
template <typename T, int MR>
inline void mk_apix(int64_t K, const T* ap, int64_t M, int64_t m0, const T* bp, T* C, int64_t ldc, int64_t np,
                    bool acc) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  V c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) {
    c0[i] = V(T(0));
    c1[i] = V(T(0));
  }
  const T* a = ap + m0;
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = V::loadu(bp + k * 2 * L), b1 = V::loadu(bp + k * 2 * L + L);
    for (int i = 0; i < MR; ++i) {
      const V w(a[k * M + i]);
      c0[i] = at::vec::fmadd(w, b0, c0[i]);
      c1[i] = at::vec::fmadd(w, b1, c1[i]);
    }
  }
  if (np == 2 * L) {
    for (int i = 0; i < MR; ++i) {
      if (acc) {
        c0[i] = c0[i] + V::loadu(C + i * ldc);
        c1[i] = c1[i] + V::loadu(C + i * ldc + L);
      }
      c0[i].store(C + i * ldc);
      c1[i].store(C + i * ldc + L);
    }
    return;
  }
  // Partial panel: full stores to a local buffer (a partial store would take the accumulators'
  // address and make the compiler spill them in the k loop), then copy np values.
  alignas(64) T tmp[2 * L];
  for (int i = 0; i < MR; ++i) {
    c0[i].store(tmp);
    c1[i].store(tmp + L);
    T* c = C + i * ldc;
    if (acc) {
      for (int64_t j = 0; j < np; ++j) c[j] += tmp[j];
    } else {
      for (int64_t j = 0; j < np; ++j) c[j] = tmp[j];
    }
  }
}

// C (M x np, row stride ldc) (= or +=) A B, A packed by pack_a (M x K), B: K x np pixels (row stride ldb).
// B is first copied panel by panel (2 vectors of pixels x K) into a contiguous thread-local buffer:
// reading K rows with a large power-of-two-ish stride directly thrashes L1 sets.
template <typename T>
inline void gemm_apix(int64_t M, int64_t np, int64_t K, const T* ap, const T* B, int64_t ldb, T* C, int64_t ldc,
                      bool acc) {
  constexpr int64_t NR = 2 * Vec<T>::size();
  constexpr int MR = 6;
  thread_local std::vector<T> panel;
  const int64_t npan = (np + NR - 1) / NR;
  if (int64_t(panel.size()) < npan * K * NR) panel.resize(npan * K * NR);
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    for (int64_t q = 0; q < npan; ++q) {
      T* dst = panel.data() + (q * K + k) * NR;
      const int64_t n = std::min(NR, np - q * NR);
      for (int64_t j = 0; j < n; ++j) dst[j] = b[q * NR + j];
      for (int64_t j = n; j < NR; ++j) dst[j] = T(0);
    }
  }
  for (int64_t q = 0; q < npan; ++q) {
    const int64_t p = q * NR, n = std::min(NR, np - p);
    const T* bp = panel.data() + q * K * NR;
    int64_t m = 0;
    for (; m + MR <= M; m += MR) mk_apix<T, MR>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc);
    switch (M - m) {
      case 1: mk_apix<T, 1>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc); break;
      case 2: mk_apix<T, 2>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc); break;
      case 3: mk_apix<T, 3>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc); break;
      case 4: mk_apix<T, 4>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc); break;
      case 5: mk_apix<T, 5>(K, ap, M, m, bp, C + m * ldc + p, ldc, n, acc); break;
      default: break;
    }
  }
}

// Reduction over pixels: D[m][k] (=) sum_p G[m][p] * X[k][p], for an (OR x KR) block.
template <typename T, int OR, int KR>
inline void mk_red(int64_t np, const T* G, int64_t ldg, const T* X, int64_t ldx, T* D, int64_t ldd) {
  using V = Vec<T>;
  constexpr int64_t L = V::size();
  V acc[OR][KR];
  for (int i = 0; i < OR; ++i)
    for (int j = 0; j < KR; ++j) acc[i][j] = V(T(0));
  int64_t p = 0;
  for (; p + L <= np; p += L) {
    V x[KR];
    for (int j = 0; j < KR; ++j) x[j] = V::loadu(X + j * ldx + p);
    for (int i = 0; i < OR; ++i) {
      const V g = V::loadu(G + i * ldg + p);
      for (int j = 0; j < KR; ++j) acc[i][j] = at::vec::fmadd(g, x[j], acc[i][j]);
    }
  }
  if (p < np) {  // partial loads zero the missing lanes
    V x[KR];
    for (int j = 0; j < KR; ++j) x[j] = V::loadu(X + j * ldx + p, np - p);
    for (int i = 0; i < OR; ++i) {
      const V g = V::loadu(G + i * ldg + p, np - p);
      for (int j = 0; j < KR; ++j) acc[i][j] = at::vec::fmadd(g, x[j], acc[i][j]);
    }
  }
  for (int i = 0; i < OR; ++i)
    for (int j = 0; j < KR; ++j) {
      T buf[L];
      acc[i][j].store(buf);
      T s = 0;
      for (int64_t l = 0; l < L; ++l) s += buf[l];
      D[i * ldd + j] = s;
    }
}

template <typename T, int OR>
inline void red_row_block(int64_t np, const T* G, int64_t ldg, int64_t Kd, const T* X, int64_t ldx, T* D,
                          int64_t ldd) {
  constexpr int KR = 4;
  int64_t k = 0;
  for (; k + KR <= Kd; k += KR) mk_red<T, OR, KR>(np, G, ldg, X + k * ldx, ldx, D + k, ldd);
  switch (Kd - k) {
    case 1: mk_red<T, OR, 1>(np, G, ldg, X + k * ldx, ldx, D + k, ldd); break;
    case 2: mk_red<T, OR, 2>(np, G, ldg, X + k * ldx, ldx, D + k, ldd); break;
    case 3: mk_red<T, OR, 3>(np, G, ldg, X + k * ldx, ldx, D + k, ldd); break;
    default: break;
  }
}

// D (M x Kd, row stride ldd) = G (M x np, row stride ldg) X^T (X: Kd x np, row stride ldx).
template <typename T>
inline void gemm_red(int64_t M, int64_t Kd, int64_t np, const T* G, int64_t ldg, const T* X, int64_t ldx, T* D,
                     int64_t ldd) {
  constexpr int OR = 3;
  int64_t m = 0;
  for (; m + OR <= M; m += OR) red_row_block<T, OR>(np, G + m * ldg, ldg, Kd, X, ldx, D + m * ldd, ldd);
  switch (M - m) {
    case 1: red_row_block<T, 1>(np, G + m * ldg, ldg, Kd, X, ldx, D + m * ldd, ldd); break;
    case 2: red_row_block<T, 2>(np, G + m * ldg, ldg, Kd, X, ldx, D + m * ldd, ldd); break;
    default: break;
  }
}

}  // namespace cpu
}  // namespace eimn
