// Exactness check of the CPU GEMM kernels (csrc/cpu/cpu_gemm.h) against plain loops that sum the same products in
// the same order with std::fma: every result must be bitwise equal. Built twice by tests/test_cpu_gemm.py, for the
// AVX2 micro-kernel (-mavx2 -mfma) and for the compiler's native target (the AVX-512 one where the CPU has it),
// so both code paths are checked whichever machine runs the tests. Prints one line per failure; exit status 1 if
// any.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/cpu_gemm.h"

using namespace eimn::cpu;

namespace {
int failures = 0;

template <typename T> std::vector<T> random_vec(size_t n, std::mt19937& g) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(g));
  return v;
}

template <typename T> void expect_equal(const char* what, const std::vector<T>& got, const std::vector<T>& want,
                                        int64_t M, int64_t K, int64_t P) {
  for (size_t i = 0; i < want.size(); ++i)
    if (!(got[i] == want[i])) {
      std::printf("FAIL %s<%s> M=%ld K=%ld P=%ld: element %zu is %.9g, want %.9g\n", what,
                  sizeof(T) == 4 ? "float" : "double", long(M), long(K), long(P), i, double(got[i]), double(want[i]));
      ++failures;
      return;
    }
}

// C[m][p] (=|+=) sum_k A[m][k] B[k][p] (k ascending, fma) + bias[m]: what gemm_*_packed computes.
template <typename T> void ref_nn(int64_t M, int64_t K, int64_t P, const T* A, const T* B, const T* bias, bool acc,
                                  T* C) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < P; ++p) {
      T s = 0;
      for (int64_t k = 0; k < K; ++k) s = std::fma(A[m * K + k], B[k * P + p], s);
      if (bias) s += bias[m];
      C[m * P + p] = acc ? C[m * P + p] + s : s;
    }
}

// C[m][n] += sum over pixel blocks of kNtBlock (block sums in pixel order, fma) of A[m][q] B[n][q]: gemm_nt.
template <typename T> void ref_nt(int64_t M, int64_t N, int64_t P, const T* A, const T* B, T* C) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t q0 = 0; q0 < P; q0 += kNtBlock) {
        T s = 0;
        for (int64_t q = q0; q < std::min(P, q0 + kNtBlock); ++q) s = std::fma(A[m * P + q], B[n * P + q], s);
        C[m * N + n] += s;
      }
}

template <typename T> void check_shape(int64_t M, int64_t K, int64_t P, std::mt19937& g) {
  constexpr int NR = panel_width<T>();
  const int64_t nblk = (P + NR - 1) / NR;
  const auto A = random_vec<T>(M * K, g), B = random_vec<T>(K * P, g), bias = random_vec<T>(M, g);
  const auto C0 = random_vec<T>(M * P, g);
  std::vector<T> Bp(nblk * K * NR);
  pack_b<T>(K, P, B.data(), P, Bp.data());
  const std::vector<T> ablk = pack_a_blocks<T>(A.data(), M, K, K, 1);
  for (int acc = 0; acc < 2; ++acc) {
    std::vector<T> want = C0, got = C0;
    ref_nn<T>(M, K, P, A.data(), B.data(), bias.data(), acc, want.data());
    gemm_blk_packed<T>(M, K, P, ablk.data(), Bp.data(), got.data(), P, bias.data(), acc);
    expect_equal("gemm_blk_packed", got, want, M, K, P);
    got = C0;
    gemm_blk<T>(M, K, P, ablk.data(), B.data(), P, got.data(), P, bias.data(), acc);
    expect_equal("gemm_blk", got, want, M, K, P);
    std::vector<T> want0 = C0;  // without bias, k-major A (pack_a), unpacked B
    ref_nn<T>(M, K, P, A.data(), B.data(), nullptr, acc, want0.data());
    const std::vector<T> ap = pack_a<T>(A.data(), M, K, K, 1);
    got = C0;
    gemm_apix<T>(M, P, K, ap.data(), B.data(), P, got.data(), P, acc);
    expect_equal("gemm_apix", got, want0, M, K, P);
  }
  // weight-gradient products: C (M x N=K here) += A (M x P) B (N x P)^T
  const int64_t N = K;
  const auto At = random_vec<T>(M * P, g), Bt = random_vec<T>(N * P, g), Ct = random_vec<T>(M * N, g);
  std::vector<T> want = Ct, got = Ct;
  ref_nt<T>(M, N, P, At.data(), Bt.data(), want.data());
  gemm_nt<T>(M, N, P, At.data(), P, Bt.data(), P, got.data(), N);
  expect_equal("gemm_nt", got, want, M, N, P);
  std::vector<T> Ap(nblk * M * NR);
  pack_b<T>(M, P, At.data(), P, Ap.data());  // A in the panel layout of pack_b, read in place
  got = Ct;
  gemm_nt_apacked<T>(M, N, P, Ap.data(), Bt.data(), P, got.data(), N);
  expect_equal("gemm_nt_apacked", got, want, M, N, P);
}
// pack_a / pack_a_blocks (register transposes for a row-major A, scalar otherwise) against their definitions, on a
// sub-matrix of a wider one (row stride K + 3, as a slice of W's columns) and on its transpose (column stride).
template <typename T> void check_pack(int64_t M, int64_t K, std::mt19937& g) {
  const int64_t rs = K + 3;
  const auto A = random_vec<T>(M * rs, g);
  const std::vector<T> ap = pack_a<T>(A.data(), M, K, rs, 1), ab = pack_a_blocks<T>(A.data(), M, K, rs, 1);
  const std::vector<T> apt = pack_a<T>(A.data(), K, M, 1, rs);  // A^T (K x M) given by strides
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t m0 = m / kMR * kMR, mr = std::min<int64_t>(kMR, M - m0);
      const T a = A[m * rs + k];
      if (ap[k * M + m] != a || ab[m0 * K + k * mr + (m - m0)] != a || apt[m * K + k] != a) {
        if (failures++ < 10) std::printf("pack M %ld K %ld: element (%ld, %ld) misplaced\n", long(M), long(K),
                                         long(m), long(k));
        return;
      }
    }
}
}  // namespace

int main() {
  std::mt19937 g(7);
  int shapes = 0;
  for (int64_t M : {1, 3, 6, 7, 12, 14, 15, 16, 17, 28, 29, 31, 33, 64, 170})
    for (int64_t K : {1, 5, 16, 64, 170})
      for (int64_t P : {1, 7, 16, 17, 40, 300}) {
        check_shape<float>(M, K, P, g);
        check_shape<double>(M, K, P, g);
        ++shapes;
      }
  for (int64_t M : {1, 4, 7, 8, 9, 14, 15, 16, 23, 28, 64, 170})
    for (int64_t K : {1, 3, 8, 9, 16, 17, 64, 170}) {
      check_pack<float>(M, K, g);
      check_pack<double>(M, K, g);
    }
  std::printf("kMR %d: %d shapes x 2 dtypes, %d failures\n", kMR, shapes, failures);
  return failures ? 1 : 0;
}
