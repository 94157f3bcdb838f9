// Small register-blocked GEMMs on CPU tiles for the SADFFM kernels (float / double, 256-bit vectors via
// GCC vector extensions). Row-major operands with explicit leading dimensions; single-threaded (callers
// parallelise over tiles).
//   gemm_nn: C[M x P] (=|+=) A[M x K] * B[K x P] (+ bias[M])        (1x1 conv on a pixel tile)
//   gemm_nt: C[M x N] += A[M x P] * B[N x P]^T                        (weight gradient, reduction over pixels)
#pragma once
#include <cstdint>
#include <cstring>

namespace eimn {
namespace sadffm {

typedef float vf8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
template <typename T> struct vec_of;
template <> struct vec_of<float> { using type = vf8; static constexpr int L = 8; };
template <> struct vec_of<double> { using type = vd4; static constexpr int L = 4; };

template <typename V, typename T> inline V vload(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T> inline void vstore(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// MR rows x (2 vectors) of C.
template <typename T, int MR>
inline void nn_micro(int K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, const T* bias,
                     bool accumulate) {
  using V = typename vec_of<T>::type;
  constexpr int L = vec_of<T>::L;
  V acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    T b0 = bias ? bias[i] : T(0);
    acc[i][0] = V{} + b0;
    acc[i][1] = V{} + b0;
  }
  for (int k = 0; k < K; ++k) {
    const V x0 = vload<V>(B + k * ldb), x1 = vload<V>(B + k * ldb + L);
    for (int i = 0; i < MR; ++i) {
      const T a = A[i * lda + k];
      acc[i][0] += a * x0;
      acc[i][1] += a * x1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    T* c = C + i * ldc;
    if (accumulate) {
      acc[i][0] += vload<V>(c);
      acc[i][1] += vload<V>(c + L);
    }
    vstore(c, acc[i][0]);
    vstore(c + L, acc[i][1]);
  }
}

template <typename T>
inline void gemm_nn(int M, int K, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                    const T* bias, bool accumulate) {
  constexpr int NR = 2 * vec_of<T>::L;
  int64_t p0 = 0;
  for (; p0 + NR <= P; p0 += NR) {
    int m0 = 0;
    for (; m0 + 4 <= M; m0 += 4)
      nn_micro<T, 4>(K, A + m0 * lda, lda, B + p0, ldb, C + m0 * ldc + p0, ldc, bias ? bias + m0 : nullptr, accumulate);
    const T* bb = bias ? bias + m0 : nullptr;
    switch (M - m0) {
      case 3: nn_micro<T, 3>(K, A + m0 * lda, lda, B + p0, ldb, C + m0 * ldc + p0, ldc, bb, accumulate); break;
      case 2: nn_micro<T, 2>(K, A + m0 * lda, lda, B + p0, ldb, C + m0 * ldc + p0, ldc, bb, accumulate); break;
      case 1: nn_micro<T, 1>(K, A + m0 * lda, lda, B + p0, ldb, C + m0 * ldc + p0, ldc, bb, accumulate); break;
      default: break;
    }
  }
  if (p0 < P) {  // remainder columns, scalar
    for (int m = 0; m < M; ++m) {
      T acc[2 * vec_of<T>::L];
      const int64_t np = P - p0;
      for (int64_t j = 0; j < np; ++j) acc[j] = bias ? bias[m] : T(0);
      for (int k = 0; k < K; ++k) {
        const T a = A[m * lda + k];
        const T* b = B + k * ldb + p0;
        for (int64_t j = 0; j < np; ++j) acc[j] += a * b[j];
      }
      T* c = C + m * ldc + p0;
      for (int64_t j = 0; j < np; ++j) c[j] = accumulate ? c[j] + acc[j] : acc[j];
    }
  }
}

template <typename T> inline T hsum(typename vec_of<T>::type v) {
  T s = 0;
  for (int l = 0; l < vec_of<T>::L; ++l) s += v[l];
  return s;
}

// C[MR x NR] += A[MR rows] . B[NR rows] over P columns.
template <typename T, int MR, int NR>
inline void nt_micro(int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  using V = typename vec_of<T>::type;
  constexpr int L = vec_of<T>::L;
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V{};
  int64_t p = 0;
  for (; p + L <= P; p += L) {
    V b[NR];
    for (int j = 0; j < NR; ++j) b[j] = vload<V>(B + j * ldb + p);
    for (int i = 0; i < MR; ++i) {
      const V a = vload<V>(A + i * lda + p);
      for (int j = 0; j < NR; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      T s = hsum<T>(acc[i][j]);
      for (int64_t q = p; q < P; ++q) s += A[i * lda + q] * B[j * ldb + q];
      C[i * ldc + j] += s;
    }
}

template <typename T, int MR>
inline void nt_row_block(int N, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  int n0 = 0;
  for (; n0 + 3 <= N; n0 += 3) nt_micro<T, MR, 3>(P, A, lda, B + n0 * ldb, ldb, C + n0, ldc);
  switch (N - n0) {
    case 2: nt_micro<T, MR, 2>(P, A, lda, B + n0 * ldb, ldb, C + n0, ldc); break;
    case 1: nt_micro<T, MR, 1>(P, A, lda, B + n0 * ldb, ldb, C + n0, ldc); break;
    default: break;
  }
}

template <typename T>
inline void gemm_nt(int M, int N, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t PB = 256;  // pixel block: keeps the A and B rows of one block in L2
  for (int64_t p0 = 0; p0 < P; p0 += PB) {
    const int64_t np = P - p0 < PB ? P - p0 : PB;
    int m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) nt_row_block<T, 4>(N, np, A + m0 * lda + p0, lda, B + p0, ldb, C + m0 * ldc, ldc);
    switch (M - m0) {
      case 3: nt_row_block<T, 3>(N, np, A + m0 * lda + p0, lda, B + p0, ldb, C + m0 * ldc, ldc); break;
      case 2: nt_row_block<T, 2>(N, np, A + m0 * lda + p0, lda, B + p0, ldb, C + m0 * ldc, ldc); break;
      case 1: nt_row_block<T, 1>(N, np, A + m0 * lda + p0, lda, B + p0, ldb, C + m0 * ldc, ldc); break;
      default: break;
    }
  }
}

}  // namespace sadffm
}  // namespace eimn
