// Register-blocked GEMM micro-kernels for the MOLRCM 1x1 convolutions (small channel counts, many
// pixels), written with GCC/Clang vector extensions (32-byte vectors: AVX2 FMAs with -march=native;
// arrays of at::vec::Vectorized accumulators were spilled to the stack every iteration). MKL's sgemm
// is slow on non-Intel CPUs and costs a call overhead per pixel tile.
#pragma once
#include "molrcm_vec.h"

#include <algorithm>
#include <vector>

namespace eimn {
namespace cpu {

// 32-byte SIMD register of T (8 floats / 4 doubles); the unaligned variant for loads and stores.
template <typename T> struct vreg_t {
  typedef T type __attribute__((vector_size(32)));
  typedef T utype __attribute__((vector_size(32), aligned(alignof(T))));
};
template <typename T> using vreg = typename vreg_t<T>::type;
template <typename T> inline vreg<T> vload(const T* p) { return *reinterpret_cast<const typename vreg_t<T>::utype*>(p); }
template <typename T> inline void vstore(T* p, vreg<T> v) { *reinterpret_cast<typename vreg_t<T>::utype*>(p) = v; }
template <typename T> inline vreg<T> vsplat(T x) { return vreg<T>{} + x; }

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
  using V = vreg<T>;
  constexpr int64_t L = 32 / sizeof(T);
  V c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = V{};
  const T* a = ap + m0;
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = vload(bp + k * 2 * L), b1 = vload(bp + k * 2 * L + L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T w = a[k * M + i];
      c0[i] += w * b0;
      c1[i] += w * b1;
    }
  }
  if (np == 2 * L) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      T* c = C + i * ldc;
      if (acc) {
        c0[i] += vload(c);
        c1[i] += vload(c + L);
      }
      vstore(c, c0[i]);
      vstore(c + L, c1[i]);
    }
    return;
  }
  alignas(64) T tmp[2 * L];
  for (int i = 0; i < MR; ++i) {
    vstore(tmp, c0[i]);
    vstore(tmp + L, c1[i]);
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
  constexpr int64_t NR = 2 * (32 / sizeof(T));
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
  using V = vreg<T>;
  constexpr int64_t L = 32 / sizeof(T);
  V acc[OR][KR];
#pragma GCC unroll 4
  for (int i = 0; i < OR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < KR; ++j) acc[i][j] = V{};
  int64_t p = 0;
  for (; p + L <= np; p += L) {
    V x[KR];
#pragma GCC unroll 4
    for (int j = 0; j < KR; ++j) x[j] = vload(X + j * ldx + p);
#pragma GCC unroll 4
    for (int i = 0; i < OR; ++i) {
      const V g = vload(G + i * ldg + p);
#pragma GCC unroll 4
      for (int j = 0; j < KR; ++j) acc[i][j] += g * x[j];
    }
  }
  for (int i = 0; i < OR; ++i)
    for (int j = 0; j < KR; ++j) {
      alignas(64) T buf[L];
      vstore(buf, acc[i][j]);
      T s = 0;
      for (int64_t l = 0; l < L; ++l) s += buf[l];
      for (int64_t q = p; q < np; ++q) s += G[i * ldg + q] * X[j * ldx + q];  // tail pixels
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

namespace eimn {
namespace cpu {

// Packs the K x np pixel block B (row stride ldb) into panels of NR = 2 * L pixels:
// panel[(q * K + k) * NR + j] = B[k][q * NR + j], zero past np.
template <typename T>
inline void pack_b_panels(const T* B, int64_t ldb, int64_t K, int64_t np, T* panel) {
  constexpr int64_t NR = 2 * (32 / sizeof(T));
  const int64_t npan = (np + NR - 1) / NR;
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    for (int64_t q = 0; q < npan; ++q) {
      T* dst = panel + (q * K + k) * NR;
      const int64_t n = std::min(NR, np - q * NR);
      if (n == NR) {
        vstore(dst, vload(b + q * NR));
        vstore(dst + NR / 2, vload(b + q * NR + NR / 2));
      } else {
        for (int64_t j = 0; j < n; ++j) dst[j] = b[q * NR + j];
        for (int64_t j = n; j < NR; ++j) dst[j] = T(0);
      }
    }
  }
}

// MR rows [m0, m0+MR) of A (packed by pack_a, M rows) times one packed B panel (K x NR); hands
// each finished row to st(row, c0, c1) (the two vectors of NR pixels): the epilogue stores it.
template <typename T, int MR, typename St>
inline void mk_rows(int64_t K, const T* ap, int64_t M, int64_t m0, const T* bp, St& st) {
  using V = vreg<T>;
  constexpr int64_t L = 32 / sizeof(T);
  V c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = V{};
  const T* a = ap + m0;
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = vload(bp + k * 2 * L), b1 = vload(bp + k * 2 * L + L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T w = a[k * M + i];
      c0[i] += w * b0;
      c1[i] += w * b1;
    }
  }
  for (int i = 0; i < MR; ++i) st(m0 + i, c0[i], c1[i]);
}

// Rows [mb, me) of A times one packed panel, 6 rows per micro-kernel; st as in mk_rows.
template <typename T, typename St>
inline void panel_rows(int64_t mb, int64_t me, int64_t K, const T* ap, int64_t M, const T* bp, St& st) {
  int64_t m = mb;
  for (; m + 6 <= me; m += 6) mk_rows<T, 6>(K, ap, M, m, bp, st);
  switch (me - m) {
    case 1: mk_rows<T, 1>(K, ap, M, m, bp, st); break;
    case 2: mk_rows<T, 2>(K, ap, M, m, bp, st); break;
    case 3: mk_rows<T, 3>(K, ap, M, m, bp, st); break;
    case 4: mk_rows<T, 4>(K, ap, M, m, bp, st); break;
    case 5: mk_rows<T, 5>(K, ap, M, m, bp, st); break;
    default: break;
  }
}

// Stores the NR-pixel row (c0, c1) to dst, only its first n values when n < NR.
template <typename T>
inline void store_row(T* dst, vreg<T> c0, vreg<T> c1, int64_t n) {
  constexpr int64_t L = 32 / sizeof(T);
  if (n == 2 * L) {
    vstore(dst, c0);
    vstore(dst + L, c1);
    return;
  }
  alignas(64) T tmp[2 * L];
  vstore(tmp, c0);
  vstore(tmp + L, c1);
  for (int64_t j = 0; j < n; ++j) dst[j] = tmp[j];
}

// Loads n <= NR values of src as two vectors (zero past n).
template <typename T>
inline void load_row(const T* src, int64_t n, vreg<T>& c0, vreg<T>& c1) {
  constexpr int64_t L = 32 / sizeof(T);
  if (n == 2 * L) {
    c0 = vload(src);
    c1 = vload(src + L);
    return;
  }
  alignas(64) T tmp[2 * L] = {};
  for (int64_t j = 0; j < n; ++j) tmp[j] = src[j];
  c0 = vload(tmp);
  c1 = vload(tmp + L);
}

// Conversions between the GEMM registers and at::vec::Vectorized (same 32 bytes).
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
