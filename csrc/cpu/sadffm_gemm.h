// Small register-blocked GEMMs on CPU tiles for the SADFFM kernels (float / double, 256-bit vectors via
// GCC vector extensions). Row-major operands with explicit leading dimensions; single-threaded (callers
// parallelise over tiles).
//   gemm_nn: C[M x P] (=|+=) A[M x K] * B[K x P] (+ bias[M])        (1x1 conv on a pixel tile)
//   gemm_nt: C[M x N] += A[M x P] * B[N x P]^T                        (weight gradient, reduction over pixels)
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace eimn {
namespace sadffm {

typedef float vf8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
template <typename T> struct vec_of;
template <> struct vec_of<float> { using type = vf8; static constexpr int L = 8; };
template <> struct vec_of<double> { using type = vd4; static constexpr int L = 4; };

template <typename V, typename T> inline V vload(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T> inline void vstore(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }

constexpr int kNRVec = 2;  // vectors per micro-tile row
template <typename T> constexpr int panel_width() { return kNRVec * vec_of<T>::L; }

// Packs B[K x P] (row stride ldb) into column panels of panel_width() columns: Bp[blk][k][NR], zero-padded.
template <typename T> inline void pack_b(int K, int64_t P, const T* B, int64_t ldb, T* Bp) {
  constexpr int NR = panel_width<T>();
  for (int64_t p0 = 0, blk = 0; p0 < P; p0 += NR, ++blk) {
    T* dst = Bp + blk * K * NR;
    const int64_t np = P - p0 < NR ? P - p0 : NR;
    for (int k = 0; k < K; ++k) {
      const T* src = B + k * ldb + p0;
      T* d = dst + k * NR;
      if (np == NR) {
        std::memcpy(d, src, sizeof(T) * NR);
      } else {
        for (int64_t j = 0; j < NR; ++j) d[j] = j < np ? src[j] : T(0);
      }
    }
  }
}

// C[MR x np] (=|+=) A[MR x K] * panel[K x NR] (+ bias), np <= NR valid columns.
template <typename T, int MR>
inline void nn_micro(int K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, const T* bias, bool accumulate,
                     int64_t np) {
  using V = typename vec_of<T>::type;
  constexpr int L = vec_of<T>::L, NR = panel_width<T>();
  V acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    T b0 = bias ? bias[i] : T(0);
    acc[i][0] = V{} + b0;
    acc[i][1] = V{} + b0;
  }
  for (int k = 0; k < K; ++k) {
    const V x0 = vload<V>(Bp + k * NR), x1 = vload<V>(Bp + k * NR + L);
    for (int i = 0; i < MR; ++i) {
      const T a = A[i * lda + k];
      acc[i][0] += a * x0;
      acc[i][1] += a * x1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* c = C + i * ldc;
    if (np == NR) {
      if (accumulate) {
        acc[i][0] += vload<V>(c);
        acc[i][1] += vload<V>(c + L);
      }
      vstore(c, acc[i][0]);
      vstore(c + L, acc[i][1]);
    } else {
      T tmp[NR];
      vstore(tmp, acc[i][0]);
      vstore(tmp + L, acc[i][1]);
      for (int64_t j = 0; j < np; ++j) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];
    }
  }
}

// All M rows of C for one packed panel.
template <typename T>
inline void nn_panel(int M, int K, const T* A, int64_t lda, const T* panel, T* C, int64_t ldc, const T* bias,
                     bool accumulate, int64_t np) {
  int m0 = 0;
  for (; m0 + 6 <= M; m0 += 6)
    nn_micro<T, 6>(K, A + m0 * lda, lda, panel, C + m0 * ldc, ldc, bias ? bias + m0 : nullptr, accumulate, np);
  const T* bb = bias ? bias + m0 : nullptr;
  const T* am = A + m0 * lda;
  T* cm = C + m0 * ldc;
  switch (M - m0) {
    case 5: nn_micro<T, 5>(K, am, lda, panel, cm, ldc, bb, accumulate, np); break;
    case 4: nn_micro<T, 4>(K, am, lda, panel, cm, ldc, bb, accumulate, np); break;
    case 3: nn_micro<T, 3>(K, am, lda, panel, cm, ldc, bb, accumulate, np); break;
    case 2: nn_micro<T, 2>(K, am, lda, panel, cm, ldc, bb, accumulate, np); break;
    case 1: nn_micro<T, 1>(K, am, lda, panel, cm, ldc, bb, accumulate, np); break;
    default: break;
  }
}

// C[M x P] (ldc) (=|+=) A[M x K] * Bp + bias, Bp packed by pack_b(K, P, ...).
template <typename T>
inline void gemm_nn_packed(int M, int K, int64_t P, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc,
                           const T* bias, bool accumulate) {
  constexpr int NR = panel_width<T>();
  for (int64_t p0 = 0, blk = 0; p0 < P; p0 += NR, ++blk)
    nn_panel<T>(M, K, A, lda, Bp + blk * K * NR, C + p0, ldc, bias, accumulate, P - p0 < NR ? P - p0 : NR);
}

// C[M x P] (ldc) (=|+=) A[M x K] * B[K x P] (ldb) + bias; packs B one panel at a time (avoids the L1 set
// conflicts of rows a power-of-two-ish stride apart).
template <typename T>
inline void gemm_nn(int M, int K, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                    const T* bias, bool accumulate) {
  constexpr int NR = panel_width<T>();
  std::vector<T> panel(size_t(K) * NR);
  for (int64_t p0 = 0; p0 < P; p0 += NR) {
    const int64_t np = P - p0 < NR ? P - p0 : NR;
    pack_b<T>(K, np, B + p0, ldb, panel.data());
    nn_panel<T>(M, K, A, lda, panel.data(), C + p0, ldc, bias, accumulate, np);
  }
}

// One micro-tile row count dispatch (1..6 rows) of nn_micro, accumulating into C.
template <typename T>
inline void nn_micro_rows(int mr, int K, const T* A, int64_t lda, const T* Bp, T* C, int64_t ldc, int64_t np) {
  switch (mr) {
    case 6: nn_micro<T, 6>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    case 5: nn_micro<T, 5>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    case 4: nn_micro<T, 4>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    case 3: nn_micro<T, 3>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    case 2: nn_micro<T, 2>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    case 1: nn_micro<T, 1>(K, A, lda, Bp, C, ldc, nullptr, true, np); break;
    default: break;
  }
}

// C[M x N] += A[M x P] * B[N x P]^T, computed as A * (B^T) with B^T packed into column panels per pixel block
// (register accumulation over the whole block, no horizontal sums). load_a(m0, mr, p0, np, abuf) copies rows
// [m0, m0+mr) x pixels [p0, p0+np) of A into abuf (row stride kNtBlock). The summation order depends only on
// the shapes (deterministic).
constexpr int64_t kNtBlock = 256;
template <typename T, typename LoadA>
inline void gemm_nt_impl(int M, int N, int64_t P, const LoadA& load_a, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int NR = panel_width<T>();
  constexpr int64_t PB = kNtBlock;
  const int npanels = (N + NR - 1) / NR;
  std::vector<T> bt(size_t(npanels) * PB * NR), abuf(size_t(6) * PB);
  for (int64_t p0 = 0; p0 < P; p0 += PB) {
    const int np = int(P - p0 < PB ? P - p0 : PB);
    // bt[panel][q][j] = B[panel*NR + j][p0 + q] (zero for j >= N).
    for (int pn = 0; pn < npanels; ++pn) {
      T* dst = bt.data() + size_t(pn) * PB * NR;
      const int nj = N - pn * NR < NR ? N - pn * NR : NR;
      for (int j = 0; j < NR; ++j) {
        if (j < nj) {
          const T* src = B + int64_t(pn * NR + j) * ldb + p0;
          for (int q = 0; q < np; ++q) dst[q * NR + j] = src[q];
        } else {
          for (int q = 0; q < np; ++q) dst[q * NR + j] = T(0);
        }
      }
    }
    for (int m0 = 0; m0 < M; m0 += 6) {
      const int mr = M - m0 < 6 ? M - m0 : 6;
      load_a(m0, mr, p0, np, abuf.data());
      for (int pn = 0; pn < npanels; ++pn) {
        const int nj = N - pn * NR < NR ? N - pn * NR : NR;
        nn_micro_rows<T>(mr, np, abuf.data(), PB, bt.data() + size_t(pn) * PB * NR, C + m0 * ldc + pn * NR, ldc,
                         nj);
      }
    }
  }
}

// gemm_nt with A row-major (row stride lda). A rows are copied 6 at a time into a contiguous buffer: image
// planes are often a power of two apart and would thrash the L1 sets.
template <typename T>
inline void gemm_nt(int M, int N, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  gemm_nt_impl<T>(M, N, P, [&](int m0, int mr, int64_t p0, int np, T* abuf) {
    for (int i = 0; i < mr; ++i) std::memcpy(abuf + i * kNtBlock, A + (m0 + i) * lda + p0, sizeof(T) * np);
  }, B, ldb, C, ldc);
}

// gemm_nt with A in the packed-panel layout of pack_b (Ap[blk][m][NR], blk = pixel / NR, zero-padded).
template <typename T>
inline void gemm_nt_apacked(int M, int N, int64_t P, const T* Ap, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int NR = panel_width<T>();
  static_assert(kNtBlock % NR == 0, "pixel blocks must hold whole panels");
  gemm_nt_impl<T>(M, N, P, [&](int m0, int mr, int64_t p0, int np, T* abuf) {
    for (int64_t q = 0; q < np; q += NR) {
      const T* src = Ap + ((p0 + q) / NR) * int64_t(M) * NR + int64_t(m0) * NR;
      for (int i = 0; i < mr; ++i) std::memcpy(abuf + i * kNtBlock + q, src + i * NR, sizeof(T) * NR);
    }
  }, B, ldb, C, ldc);
}

}  // namespace sadffm
}  // namespace eimn
