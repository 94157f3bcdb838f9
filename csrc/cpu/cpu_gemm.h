// The one set of register-blocked GEMM kernels of the CPU ops (MOLRCM and SADFFM 1x1 convolutions and their
// weight gradients): small channel counts, many pixels. Written with GCC/Clang vector extensions (32-byte
// vectors: AVX2 FMAs with -march=native), float and double; no torch dependency. Single-threaded: callers
// parallelise over pixel tiles. MKL's sgemm is slow on non-Intel CPUs and costs a call overhead per tile.
// Where the compiler targets AVX-512 (-march=native on such a CPU) the micro-kernel holds a whole panel row in
// one 64-byte register and computes kMR = 14 rows at a time, of two panels at once where the GEMM has two
// (mk_rows2: one broadcast of A feeds two FMAs; one panel needs a load per FMA, which bounded the old 16-row
// kernel below the FMA rate: 20-28% faster GEMMs single-threaded); the panel layout, the epilogues (two 32-byte
// halves per row) and every result bit stay the same.
//
// Layouts. Images are row-major [channel][pixel] with a leading dimension (often H*W). B operands are copied
// into packed panels of NR = 2 vectors of pixels: Bp[blk][k][NR] (pack_b). A (weights) is read row-major
// (A[m*lda + k]), packed k-major by pack_a (ap[k*M + m]) or in k-major blocks of kMR rows by pack_a_blocks;
// all through one micro-kernel (mk_rows, row- or k-major a template flag; mk_rows2 for two panels).
//   gemm_blk / _packed       : C[M x P] (=|+=) A[M x K] * B[K x P] (+ bias[M]), A packed by pack_a_blocks
//   gemm_apix                : the same without bias, A packed by pack_a, B unpacked
//   panel_rows               : rows of one packed panel, each handed to an epilogue functor (fused stores)
//   gemm_nt / _apacked       : C[M x N] += A[M x P] * B[N x P]^T     (weight gradients: reduction over pixels)
// Every reduction order depends only on the shapes (deterministic).
#pragma once
#include "cpu/cpu_isa.h"
#include "cpu/cpu_stream.h"
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace eimn::cpu {
inline namespace EIMN_ISA {

// 32-byte SIMD register of T (8 floats / 4 doubles); the unaligned variant for loads and stores.
template <typename T> struct vreg_t {
  typedef T type __attribute__((vector_size(32)));
  typedef T utype __attribute__((vector_size(32), aligned(alignof(T))));
};
template <typename T> using vreg = typename vreg_t<T>::type;
template <typename T> constexpr int kLanes = int(32 / sizeof(T));
template <typename T> inline vreg<T> vload(const T* p) { return *reinterpret_cast<const typename vreg_t<T>::utype*>(p); }
template <typename T> inline void vstore(T* p, vreg<T> v) { *reinterpret_cast<typename vreg_t<T>::utype*>(p) = v; }
template <typename T> inline vreg<T> vsplat(T x) { return vreg<T>{} + x; }

// In-register transpose of an L x L block (L = kLanes): r[i] holds row i on entry, column i on exit.
// EIMN_SHUFFLE(a, b, i...): lanes of the concatenation a|b (GCC: __builtin_shuffle, Clang: __builtin_shufflevector).
typedef int32_t vi32x8 __attribute__((vector_size(32)));
typedef int64_t vi64x4 __attribute__((vector_size(32)));
#if defined(__clang__)
#define EIMN_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#define EIMN_SHUFFLE4(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)
#else
#define EIMN_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shuffle(a, b, vi32x8{i0, i1, i2, i3, i4, i5, i6, i7})
#define EIMN_SHUFFLE4(a, b, i0, i1, i2, i3) __builtin_shuffle(a, b, vi64x4{i0, i1, i2, i3})
#endif
inline void transpose_lanes(vreg<float>* r) {
  vreg<float> t[8], u[8];
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    t[i] = EIMN_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = EIMN_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // pairs of pairs
    u[i] = EIMN_SHUFFLE8(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = EIMN_SHUFFLE8(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = EIMN_SHUFFLE8(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = EIMN_SHUFFLE8(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit halves
    r[i] = EIMN_SHUFFLE8(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[i + 4] = EIMN_SHUFFLE8(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
inline void transpose_lanes(vreg<double>* r) {
  const vreg<double> t0 = EIMN_SHUFFLE4(r[0], r[1], 0, 4, 2, 6), t1 = EIMN_SHUFFLE4(r[0], r[1], 1, 5, 3, 7);
  const vreg<double> t2 = EIMN_SHUFFLE4(r[2], r[3], 0, 4, 2, 6), t3 = EIMN_SHUFFLE4(r[2], r[3], 1, 5, 3, 7);
  r[0] = EIMN_SHUFFLE4(t0, t2, 0, 1, 4, 5);
  r[2] = EIMN_SHUFFLE4(t0, t2, 2, 3, 6, 7);
  r[1] = EIMN_SHUFFLE4(t1, t3, 0, 1, 4, 5);
  r[3] = EIMN_SHUFFLE4(t1, t3, 2, 3, 6, 7);
}
#undef EIMN_SHUFFLE8
#undef EIMN_SHUFFLE4

// Pixels per packed panel (two vectors).
template <typename T> constexpr int panel_width() { return 2 * kLanes<T>; }

// dst[j * ds + i] = src[i * rs + j] for i, j < L = kLanes<T>: one L x L tile transposed through registers.
template <typename T> inline void transpose_tile(const T* src, int64_t rs, T* dst, int64_t ds) {
  constexpr int L = kLanes<T>;
  vreg<T> r[L];
  for (int i = 0; i < L; ++i) r[i] = vload(src + i * rs);
  transpose_lanes(r);
  for (int j = 0; j < L; ++j) vstore(dst + j * ds, r[j]);
}

// dst[k * ds + m] = A[m * rs + k] for m < M, k < K (A row-major: unit column stride), M, K >= L: in L x L register
// transposes, the last tile of each dimension overlapping the one before (its shared elements written twice, with
// the same values), so that every element moves in whole vectors.
template <typename T> inline void transpose_tiles(const T* A, int64_t M, int64_t K, int64_t rs, T* dst, int64_t ds) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t m0 = 0;; m0 += L) {
    const int64_t m = m0 + L <= M ? m0 : M - L;
    for (int64_t k0 = 0;; k0 += L) {
      const int64_t k = k0 + L <= K ? k0 : K - L;
      transpose_tile(A + m * rs + k, rs, dst + k * ds + m, ds);
      if (k + L >= K) break;
    }
    if (m + L >= M) break;
  }
}

// Pack a small (M x K) matrix A, given by element strides, as ap[k * M + m] = A[m][k]. A row-major A (cs = 1) moves
// in register transposes of whole vectors (transpose_tiles): the 1x1 convolutions of small images pack their
// weights on every call, and a scalar pack of a 256 x 256 weight (VAN's 7x7 stage) took 40% of the conv's time.
template <typename T>
inline std::vector<T> pack_a(const T* A, int64_t M, int64_t K, int64_t rs, int64_t cs) {
  std::vector<T> ap(M * K);
  if (cs == 1 && M >= kLanes<T> && K >= kLanes<T>) {
    transpose_tiles(A, M, K, rs, ap.data(), M);
    return ap;
  }
  constexpr int64_t B = 16;  // else in 16 x 16 tiles: a cache line at a time rather than one line per element
  for (int64_t m0 = 0; m0 < M; m0 += B)
    for (int64_t k0 = 0; k0 < K; k0 += B) {
      const int64_t m1 = m0 + B < M ? m0 + B : M, k1 = k0 + B < K ? k0 + B : K;
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t k = k0; k < k1; ++k) ap[k * M + m] = A[m * rs + k * cs];
    }
  return ap;
}

// Packs B[K x P] (row stride ldb) into panels of panel_width() pixels: Bp[blk][k][NR], zero past P.
// Full panels four rows of B at a time: four sequential read streams (prefetcher-friendly for image planes a
// large stride apart), and each panel gets four adjacent rows per visit instead of one line K * NR apart per
// store (single thread, 64 x 4096 from memory: 0.31 -> 0.22 ms per 4 images).
template <typename T> inline void pack_b(int64_t K, int64_t P, const T* B, int64_t ldb, T* Bp) {
  constexpr int NR = panel_width<T>();
  constexpr int64_t KC = 4;
  const int64_t nfull = P / NR;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = K - k0 < KC ? K - k0 : KC;
    for (int64_t blk = 0; blk < nfull; ++blk) {
      T* d = Bp + (blk * K + k0) * NR;
      const T* src = B + k0 * ldb + blk * NR;
      for (int64_t k = 0; k < kc; ++k) std::memcpy(d + k * NR, src + k * ldb, sizeof(T) * NR);
    }
  }
  if (nfull * NR == P) return;
  const int64_t p0 = nfull * NR, np = P - p0;  // the partial last panel
  for (int64_t k = 0; k < K; ++k) {
    T* d = Bp + (nfull * K + k) * NR;
    for (int64_t j = 0; j < NR; ++j) d[j] = j < np ? B[k * ldb + p0 + j] : T(0);
  }
}

// The micro-kernel: rows i < MR of A times one packed panel bp (K x NR); hands each finished row to
// st(i, c0, c1) (its two vectors of NR pixels). A's element (i, k) is a[k * ld + i] when KMajor (weights packed
// by pack_a) and a[i * ld + k] otherwise (row-major): one stride is known at compile time in both cases.
// With kb > 0, A is stored in blocks of kb columns, abs elements apart (block j holds columns [j*kb, (j+1)*kb)
// in the layout above): how the packed panels of pack_b read as a row-major A (kb = NR, ld = NR) without a copy.
// Calls run(k0, k1, ak) on A's columns [0, K): at once (kb <= 0), or per block of kb columns, block j at a + j * abs
// (ak: A's column k0). The micro-kernels' run lambdas are always inlined: with the two call sites here GCC kept
// them out of line, with the accumulators in memory (a load and a store per FMA).
template <typename T, typename Run>
__attribute__((always_inline)) inline void for_a_blocks(int64_t K, const T* a, int64_t kb, int64_t abs, Run&& run) {
  if (kb <= 0) return run(0, K, a);
  for (int64_t k0 = 0, j = 0; k0 < K; k0 += kb, ++j) run(k0, k0 + kb < K ? k0 + kb : K, a + j * abs);
}

#if defined(__AVX512F__)
// Rows per micro-kernel call: kMR accumulators of one 64-byte register each per panel; the two-panel kernel
// (mk_rows2) holds 2 * kMR of AVX-512's 32 registers, plus the two panel rows.
constexpr int kMR = 14;
// A 64-byte register of T, xreg<T>: one whole panel row; split into the two 32-byte halves the epilogues take.
template <typename T> struct xreg_t {
  typedef T type __attribute__((vector_size(64)));
  typedef T utype __attribute__((vector_size(64), aligned(alignof(T))));
};
template <typename T> using xreg = typename xreg_t<T>::type;
template <typename T> inline xreg<T> xload(const T* p) { return *reinterpret_cast<const typename xreg_t<T>::utype*>(p); }
inline void split_halves(xreg<float> w, vreg<float>& lo, vreg<float>& hi) {  // register moves, no memory
  lo = __builtin_shufflevector(w, w, 0, 1, 2, 3, 4, 5, 6, 7);
  hi = __builtin_shufflevector(w, w, 8, 9, 10, 11, 12, 13, 14, 15);
}
inline void split_halves(xreg<double> w, vreg<double>& lo, vreg<double>& hi) {
  lo = __builtin_shufflevector(w, w, 0, 1, 2, 3);
  hi = __builtin_shufflevector(w, w, 4, 5, 6, 7);
}
// Hands the MR accumulator rows c[i] to st: whole (st(i, row)) where st takes a 64-byte row, else as their two
// 32-byte halves (st(i, lo, hi)). Whole rows spare the epilogue a split and two half-width stores per row, which
// count at K = 64 (single-thread M12 K64 GEMM 160-168 -> 171-177 GFLOP/s, with the column loop always inlined).
template <typename T, int MR, typename St>
__attribute__((always_inline)) inline void store_rows(const xreg<T>* c, St& st) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if constexpr (std::is_invocable_v<St&, int, xreg<T>>) {
      st(i, c[i]);
    } else {
      vreg<T> lo, hi;
      split_halves(c[i], lo, hi);
      st(i, lo, hi);
    }
  }
}
template <typename T, int MR, bool KMajor, typename St>
inline void mk_rows(int64_t K, const T* a, int64_t ld, const T* bp, St&& st, int64_t kb = 0, int64_t abs = 0,
                    const T* pf = nullptr) {
  using W = xreg<T>;
  constexpr int64_t NR = 2 * kLanes<T>;
  W c[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c[i] = W{};
  // columns [k0, k1); ak: A's column k0 (always inlined: see for_a_blocks)
  auto run = [&](int64_t k0, int64_t k1, const T* ak) __attribute__((always_inline)) {
    for (int64_t k = k0; k < k1; ++k) {
      const W b = xload(bp + k * NR);
      if (pf) __builtin_prefetch(pf + k * NR);
      const int64_t kk = k - k0;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) c[i] += (KMajor ? ak[kk * ld + i] : ak[i * ld + kk]) * b;
    }
  };
  for_a_blocks(K, a, kb, abs, run);
  store_rows<T, MR>(c, st);
}
// mk_rows on two panels at once (bp0, bp1: K x NR each; st0 / st1 get their rows): every A element loaded feeds
// two FMAs, so the loads (one broadcast per row and k, one panel row per panel and k) stay below the FMA rate,
// where one panel needs one load per FMA. Each output value is the same chain of FMAs as in mk_rows (same bits).
// pf: two panels (K x NR each, contiguous) to prefetch, or nullptr.
template <typename T, int MR, bool KMajor, typename St0, typename St1>
inline void mk_rows2(int64_t K, const T* a, int64_t ld, const T* bp0, const T* bp1, St0&& st0, St1&& st1,
                     int64_t kb = 0, int64_t abs = 0, const T* pf = nullptr) {
  using W = xreg<T>;
  constexpr int64_t NR = 2 * kLanes<T>;
  W c[MR], d[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c[i] = d[i] = W{};
  // columns [k0, k1); ak: A's column k0 (always inlined: see for_a_blocks)
  auto run = [&](int64_t k0, int64_t k1, const T* ak) __attribute__((always_inline)) {
    for (int64_t k = k0; k < k1; ++k) {
      const W b0 = xload(bp0 + k * NR), b1 = xload(bp1 + k * NR);
      if (pf) {
        __builtin_prefetch(pf + k * NR);
        __builtin_prefetch(pf + (K + k) * NR);
      }
      const int64_t kk = k - k0;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T w = KMajor ? ak[kk * ld + i] : ak[i * ld + kk];
        c[i] += w * b0;
        d[i] += w * b1;
      }
    }
  };
  for_a_blocks(K, a, kb, abs, run);
  store_rows<T, MR>(c, st0);
  store_rows<T, MR>(d, st1);
}
#define EIMN_GEMM_TWO_PANELS 1
#else
// Rows per micro-kernel call: 6 rows x 2 vectors = 12 accumulators (AVX2 has 16 registers).
constexpr int kMR = 6;
template <typename T, int MR, bool KMajor, typename St>
inline void mk_rows(int64_t K, const T* a, int64_t ld, const T* bp, St&& st, int64_t kb = 0, int64_t abs = 0,
                    const T* pf = nullptr) {
  using V = vreg<T>;
  constexpr int64_t L = kLanes<T>;
  V c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = V{};
  // columns [k0, k1); ak: A's column k0 (always inlined: see for_a_blocks)
  auto run = [&](int64_t k0, int64_t k1, const T* ak) __attribute__((always_inline)) {
    for (int64_t k = k0; k < k1; ++k) {
      const V b0 = vload(bp + k * 2 * L), b1 = vload(bp + k * 2 * L + L);
      if (pf) __builtin_prefetch(pf + k * 2 * L);
      const int64_t kk = k - k0;
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const T w = KMajor ? ak[kk * ld + i] : ak[i * ld + kk];
        c0[i] += w * b0;
        c1[i] += w * b1;
      }
    }
  };
  for_a_blocks(K, a, kb, abs, run);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) st(i, c0[i], c1[i]);
}
#endif

// Whether the GEMMs take their panels in pairs (mk_rows2, AVX-512). The AVX2 kernel's rows already span two
// vectors; there the GEMMs keep one panel at a time (pairs through two mk_rows calls measured 3-8% slower).
#if defined(EIMN_GEMM_TWO_PANELS)
constexpr bool kTwoPanels = true;
#else
constexpr bool kTwoPanels = false;
#endif

// mk_rows with MR = mr (1 <= mr <= kMR) chosen at run time.
template <typename T, bool KMajor, int MR = kMR, typename St>
inline void mk_rows_n(int mr, int64_t K, const T* a, int64_t ld, const T* bp, St&& st, int64_t kb, int64_t abs,
                      const T* pf) {
  if constexpr (MR >= 1) {
    if (mr == MR) return mk_rows<T, MR, KMajor>(K, a, ld, bp, st, kb, abs, pf);
    return mk_rows_n<T, KMajor, MR - 1>(mr, K, a, ld, bp, st, kb, abs, pf);
  }
}

#if defined(EIMN_GEMM_TWO_PANELS)
// mk_rows2 with MR = mr (1 <= mr <= kMR) chosen at run time.
template <typename T, bool KMajor, int MR = kMR, typename St0, typename St1>
inline void mk_rows2_n(int mr, int64_t K, const T* a, int64_t ld, const T* bp0, const T* bp1, St0&& st0, St1&& st1,
                       int64_t kb, int64_t abs, const T* pf) {
  if constexpr (MR >= 1) {
    if (mr == MR) return mk_rows2<T, MR, KMajor>(K, a, ld, bp0, bp1, st0, st1, kb, abs, pf);
    return mk_rows2_n<T, KMajor, MR - 1>(mr, K, a, ld, bp0, bp1, st0, st1, kb, abs, pf);
  }
}
#endif

// A's layouts: row-major (A[m * ld + k]), k-major (A[k * ld + m]), or k-major blocks of kMR rows (pack_a_blocks:
// block j, rows [j*kMR, min(M, (j+1)*kMR)), from element j*kMR*K on, [k][rows of the block]). Blocks give every
// micro-kernel call one contiguous stream of A whatever M is; plain k-major reads kMR of every M values.
enum class ALay { RowMajor, KMajor, Blocks };

// A micro-kernel's epilogue for rows from m0 on: row i goes to st(m0 + i, ...) in whichever form (halves, or a
// whole 64-byte row) st takes.
template <typename St> struct RowsAt {
  St& st;
  int64_t m0;
  template <typename... V>
  __attribute__((always_inline)) auto operator()(int i, V... v) const -> decltype(st(m0 + i, v...)) {
    return st(m0 + i, v...);
  }
};

// Rows [mb, me) of A (layout Lay) times one panel, kMR rows per micro-kernel; st(m, c0, c1) gets the absolute row
// index m.
// kb, abs: A's column blocks as in mk_rows.
// pf: a panel (K x NR) to prefetch into the cache while the first micro-kernel call streams this one (the next
// panel of a GEMM, whose first read would otherwise wait on memory), or nullptr.
template <typename T, ALay Lay, typename St>
inline void rows_panel(int64_t mb, int64_t me, int64_t K, const T* A, int64_t ld, const T* bp, St& st,
                       int64_t kb = 0, int64_t abs = 0, const T* pf = nullptr) {
  constexpr bool KMajor = Lay != ALay::RowMajor;
  int64_t m = mb;  // Blocks: mb is 0 (or a multiple of kMR), me is M
  auto at = [&](int64_t m0) { return RowsAt<St>{st, m0}; };
  auto row = [&](int64_t m0) { return Lay == ALay::Blocks ? A + m0 * K : Lay == ALay::KMajor ? A + m0 : A + m0 * ld; };
  for (; m + kMR <= me; m += kMR, pf = nullptr)
    mk_rows<T, kMR, KMajor>(K, row(m), Lay == ALay::Blocks ? kMR : ld, bp, at(m), kb, abs, pf);
  if (m < me) mk_rows_n<T, KMajor>(int(me - m), K, row(m), Lay == ALay::Blocks ? me - m : ld, bp, at(m), kb, abs, pf);
}

// rows_panel on two panels bp0, bp1 (st0 / st1 get their rows; results as two rows_panel calls); pf: the two
// panels (contiguous) to prefetch while the first micro-kernel call runs, or nullptr. AVX-512 only (kTwoPanels):
// elsewhere only declared, for the GEMMs' pair loops that `if constexpr` leaves out.
template <typename T, ALay Lay, typename St0, typename St1>
inline void rows_panel2(int64_t mb, int64_t me, int64_t K, const T* A, int64_t ld, const T* bp0, const T* bp1,
                        St0& st0, St1& st1, int64_t kb = 0, int64_t abs = 0, const T* pf = nullptr)
#if defined(EIMN_GEMM_TWO_PANELS)
{
  constexpr bool KMajor = Lay != ALay::RowMajor;
  int64_t m = mb;
  auto at = [](auto& st, int64_t m0) { return RowsAt<std::remove_reference_t<decltype(st)>>{st, m0}; };
  auto row = [&](int64_t m0) { return Lay == ALay::Blocks ? A + m0 * K : Lay == ALay::KMajor ? A + m0 : A + m0 * ld; };
  for (; m + kMR <= me; m += kMR, pf = nullptr)
    mk_rows2<T, kMR, KMajor>(K, row(m), Lay == ALay::Blocks ? kMR : ld, bp0, bp1, at(st0, m), at(st1, m), kb, abs,
                             pf);
  if (m < me)
    mk_rows2_n<T, KMajor>(int(me - m), K, row(m), Lay == ALay::Blocks ? me - m : ld, bp0, bp1, at(st0, m),
                          at(st1, m), kb, abs, pf);
}
#else
;
#endif

// Rows [mb, me) of A packed by pack_a (M rows) times one packed panel; st as in rows_panel.
template <typename T, typename St>
inline void panel_rows(int64_t mb, int64_t me, int64_t K, const T* ap, int64_t M, const T* bp, St& st) {
  rows_panel<T, ALay::KMajor>(mb, me, K, ap, M, bp, st);
}

// Packs a small (M x K) matrix A, given by element strides, in k-major blocks of kMR rows (ALay::Blocks), into
// ap (M * K elements).
template <typename T>
inline void pack_a_blocks_into(const T* A, int64_t M, int64_t K, int64_t rs, int64_t cs, T* ap) {
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    const int64_t mr = M - m0 < kMR ? M - m0 : kMR;
    if (cs == 1 && mr >= kLanes<T> && K >= kLanes<T>) {  // a block is its rows transposed (see pack_a)
      transpose_tiles(A + m0 * rs, mr, K, rs, ap + m0 * K, mr);
      continue;
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < mr; ++i) ap[m0 * K + k * mr + i] = A[(m0 + i) * rs + k * cs];
  }
}
template <typename T>
inline std::vector<T> pack_a_blocks(const T* A, int64_t M, int64_t K, int64_t rs, int64_t cs) {
  std::vector<T> ap(M * K);
  pack_a_blocks_into(A, M, K, rs, cs, ap.data());
  return ap;
}

// Stores the NR-pixel row (c0, c1) to dst (=, or += when acc), only its first n values when n < NR.
template <typename T>
inline void store_row(T* dst, vreg<T> c0, vreg<T> c1, int64_t n, bool acc = false) {
  constexpr int64_t L = kLanes<T>;
  if (n == 2 * L) {
    if (acc) {
      c0 += vload(dst);
      c1 += vload(dst + L);
    }
    vstore(dst, c0);
    vstore(dst + L, c1);
    return;
  }
  alignas(64) T tmp[2 * L];
  vstore(tmp, c0);
  vstore(tmp + L, c1);
  for (int64_t j = 0; j < n; ++j) dst[j] = acc ? dst[j] + tmp[j] : tmp[j];
}

// Stores row f(part, offset) of a micro-kernel's output row, given as the parts store_rows hands an epilogue (one
// 64-byte register, or two 32-byte halves; offset: the part's first pixel), to dst: its first n values; with
// streaming stores where `stream`, the row is whole and dst is aligned to the parts (cpu_stream.h). f may read
// other panel rows at the offset; each part's value is the same expression whichever form the parts take.
template <typename T, typename F, typename... V>
__attribute__((always_inline)) inline void store_row_as(T* dst, int64_t n, bool stream, F&& f, V... parts) {
  constexpr int64_t NR = 2 * kLanes<T>, L = NR / int64_t(sizeof...(V));
  int64_t off = 0;
  if (n == NR) {
    if (stream && reinterpret_cast<uintptr_t>(dst) % (L * sizeof(T)) == 0)
      ((stream_vec(dst + off, f(parts, off)), off += L), ...);
    else
      ((store_vec(dst + off, f(parts, off)), off += L), ...);
    return;
  }
  ((store_vec_first(dst + off, f(parts, off), n - off), off += L), ...);  // masked: no library call (cpu_stream.h)
}

// Loads n <= NR values of src as two vectors (zero past n).
template <typename T>
inline void load_row(const T* src, int64_t n, vreg<T>& c0, vreg<T>& c1) {
  constexpr int64_t L = kLanes<T>;
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

// gemm_packed's epilogue for one panel (columns dst[0, np) of each row m, row stride ldc): row m = acc (+ bias[m])
// (+ dst, accumulate).
template <typename T> struct PanelStore {
  T* dst;
  int64_t ldc;
  const T* bias;
  bool accumulate;
  int64_t np;
  __attribute__((always_inline)) void operator()(int64_t m, vreg<T> c0, vreg<T> c1) const {
    if (bias) {
      c0 += bias[m];
      c1 += bias[m];
    }
    store_row<T>(dst + m * ldc, c0, c1, np, accumulate);
  }
};
// The same for a full panel (np = NR), taking whole 64-byte rows where the compiler targets AVX-512; both forms add
// in the same order (same bits). Full panels only: a run-time np test per row of the whole-row form was slower.
template <typename T> struct FullPanelStore : PanelStore<T> {
  FullPanelStore(T* dst, int64_t ldc, const T* bias, bool accumulate)
      : PanelStore<T>{dst, ldc, bias, accumulate, 2 * kLanes<T>} {}
  using PanelStore<T>::operator();
#if defined(__AVX512F__)
  __attribute__((always_inline)) void operator()(int64_t m, xreg<T> c) const {
    T* d = this->dst + m * this->ldc;
    if (this->bias) c += this->bias[m];
    if (this->accumulate) c += xload(d);
    *reinterpret_cast<typename xreg_t<T>::utype*>(d) = c;
  }
#endif
};

// C[M x P] (ldc) (=|+=) A * Bp + bias, A (M x K; layout as in mk_rows), Bp packed by pack_b(K, P).
template <typename T, ALay Lay>
inline void gemm_packed(int64_t M, int64_t K, int64_t P, const T* A, int64_t ld, const T* Bp, T* C, int64_t ldc,
                        const T* bias, bool accumulate) {
  constexpr int NR = panel_width<T>();
  auto full_at = [&](int64_t p0) { return FullPanelStore<T>(C + p0, ldc, bias, accumulate); };
  int64_t p0 = 0, blk = 0;
  if constexpr (kTwoPanels)
    for (; p0 + 2 * NR <= P; p0 += 2 * NR, blk += 2) {  // pairs of full panels
      auto st0 = full_at(p0), st1 = full_at(p0 + NR);
      const T* bp = Bp + blk * K * NR;
      rows_panel2<T, Lay>(0, M, K, A, ld, bp, bp + K * NR, st0, st1, 0, 0,
                          p0 + 2 * NR < P ? bp + 2 * K * NR : nullptr);
    }
  for (; p0 < P; p0 += NR, ++blk) {  // the last panels (every panel without pairs)
    const T* pf = p0 + NR < P ? Bp + (blk + 1) * K * NR : nullptr;
    if (p0 + NR <= P) {
      auto st = full_at(p0);
      rows_panel<T, Lay>(0, M, K, A, ld, Bp + blk * K * NR, st, 0, 0, pf);
      continue;
    }
    PanelStore<T> st{C + p0, ldc, bias, accumulate, P - p0};  // a partial panel: P - p0 < NR columns
    rows_panel<T, Lay>(0, M, K, A, ld, Bp + blk * K * NR, st, 0, 0, pf);
  }
}

// C[M x P] (ldc) (=|+=) A * Bp + bias, A packed by pack_a_blocks (M x K): one pointer and one contiguous stream of
// A per micro-kernel call, where a row-major A costs one pointer per row (spilled to the stack beyond a few rows).
template <typename T>
inline void gemm_blk_packed(int64_t M, int64_t K, int64_t P, const T* ablk, const T* Bp, T* C, int64_t ldc,
                            const T* bias, bool accumulate) {
  gemm_packed<T, ALay::Blocks>(M, K, P, ablk, 0, Bp, C, ldc, bias, accumulate);
}

// As gemm_packed with B[K x P] (row stride ldb) unpacked: packs one panel at a time into a thread-local
// buffer (reading K rows a large power-of-two-ish stride apart directly would thrash the L1 sets).
template <typename T, ALay Lay>
inline void gemm_b(int64_t M, int64_t K, int64_t P, const T* A, int64_t ld, const T* B, int64_t ldb, T* C,
                   int64_t ldc, const T* bias, bool accumulate) {
  constexpr int NR = panel_width<T>();
  thread_local std::vector<T> panel;
  constexpr int64_t NP = kTwoPanels ? 2 * NR : NR;  // pixels packed at a time (gemm_packed's pairs)
  if (int64_t(panel.size()) < NP / NR * K * NR) panel.resize(NP / NR * K * NR);
  for (int64_t p0 = 0; p0 < P; p0 += NP) {
    const int64_t np = P - p0 < NP ? P - p0 : NP;
    pack_b<T>(K, np, B + p0, ldb, panel.data());
    gemm_packed<T, Lay>(M, K, np, A, ld, panel.data(), C + p0, ldc, bias, accumulate);
  }
}

// C[M x P] (ldc) (=|+=) A * B + bias, A packed by pack_a_blocks, B[K x P] (row stride ldb) unpacked.
template <typename T>
inline void gemm_blk(int64_t M, int64_t K, int64_t P, const T* ablk, const T* B, int64_t ldb, T* C, int64_t ldc,
                     const T* bias, bool accumulate) {
  gemm_b<T, ALay::Blocks>(M, K, P, ablk, 0, B, ldb, C, ldc, bias, accumulate);
}

// C (M x np, ldc) (=|+=) A B, A packed by pack_a (M x K), B: K x np pixels (row stride ldb).
template <typename T>
inline void gemm_apix(int64_t M, int64_t np, int64_t K, const T* ap, const T* B, int64_t ldb, T* C, int64_t ldc,
                      bool acc) {
  gemm_b<T, ALay::KMajor>(M, K, np, ap, M, B, ldb, C, ldc, nullptr, acc);
}

// Rows [m0, m0+mr) x pixels [p0, p0+np) of gemm_nt's A as the micro-kernel reads it (mk_rows, row-major):
// element (i, q) at a[(q / kb) * abs + i * ld + q % kb] (kb = 0: a[i * ld + q]).
template <typename T> struct NtABlock {
  const T* a;
  int64_t ld, kb, abs;
};

// C[M x N] += A[M x P] * B[N x P]^T, computed as A * (B^T) with B^T packed into column panels per pixel block
// (register accumulation over the whole block, no horizontal sums). view_a(m0, mr, p0, np, abuf) returns
// rows [m0, m0+mr) x pixels [p0, p0+np) of A as an NtABlock, either in place or copied into abuf (kMR rows,
// row stride kNtBlock).
constexpr int64_t kNtBlock = 256;
template <typename T, typename ViewA>
inline void gemm_nt_impl(int64_t M, int64_t N, int64_t P, const ViewA& view_a, const T* B, int64_t ldb, T* C,
                         int64_t ldc) {
  constexpr int NR = panel_width<T>();
  constexpr int64_t PB = kNtBlock;
  const int64_t npanels = (N + NR - 1) / NR;
  std::vector<T> bt(size_t(npanels) * PB * NR), abuf(size_t(kMR) * PB);
  for (int64_t p0 = 0; p0 < P; p0 += PB) {
    const int64_t np = P - p0 < PB ? P - p0 : PB;
    // bt[panel][q][j] = B[panel*NR + j][p0 + q] (zero for j >= N): whole L x L blocks through registers.
    constexpr int64_t L = kLanes<T>;
    for (int64_t pn = 0; pn < npanels; ++pn) {
      T* dst = bt.data() + pn * PB * NR;
      const int64_t nj = N - pn * NR < NR ? N - pn * NR : NR;
      const int64_t nq = nj == NR ? np / L * L : 0;  // pixels moved in whole blocks (full panels only)
      for (int64_t jb = 0; nq > 0 && jb < NR; jb += L) {
        const T* src = B + (pn * NR + jb) * ldb + p0;
        for (int64_t q = 0; q < nq; q += L) {
          vreg<T> r[L];
          for (int64_t i = 0; i < L; ++i) r[i] = vload(src + i * ldb + q);
          transpose_lanes(r);
          for (int64_t i = 0; i < L; ++i) vstore(dst + (q + i) * NR + jb, r[i]);
        }
      }
      for (int64_t j = 0; j < NR; ++j) {  // the rest one by one
        if (j < nj) {
          const T* src = B + (pn * NR + j) * ldb + p0;
          for (int64_t q = nq; q < np; ++q) dst[q * NR + j] = src[q];
        } else {
          for (int64_t q = nq; q < np; ++q) dst[q * NR + j] = T(0);
        }
      }
    }
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      const int64_t mr = M - m0 < kMR ? M - m0 : kMR;
      const NtABlock<T> av = view_a(m0, mr, p0, np, abuf.data());
      auto store_at = [&](int64_t pn) {
        const int64_t nj = N - pn * NR < NR ? N - pn * NR : NR;
        return [=](int64_t i, vreg<T> c0, vreg<T> c1) { store_row<T>(C + (m0 + i) * ldc + pn * NR, c0, c1, nj, true); };
      };
      int64_t pn = 0;
      if constexpr (kTwoPanels)
        for (; pn + 1 < npanels; pn += 2) {  // panel pairs
          auto st0 = store_at(pn), st1 = store_at(pn + 1);
          rows_panel2<T, ALay::RowMajor>(0, mr, np, av.a, av.ld, bt.data() + pn * PB * NR,
                                         bt.data() + (pn + 1) * PB * NR, st0, st1, av.kb, av.abs);
        }
      for (; pn < npanels; ++pn) {  // the last panel (every panel without pairs)
        auto st = store_at(pn);
        rows_panel<T, ALay::RowMajor>(0, mr, np, av.a, av.ld, bt.data() + pn * PB * NR, st, av.kb, av.abs);
      }
    }
  }
}

// gemm_nt with A row-major (row stride lda). A rows are copied kMR at a time into a contiguous buffer: image
// planes are often a power of two apart and would thrash the L1 sets.
template <typename T>
inline void gemm_nt(int64_t M, int64_t N, int64_t P, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc) {
  gemm_nt_impl<T>(M, N, P, [&](int64_t m0, int64_t mr, int64_t p0, int64_t np, T* abuf) {
    for (int64_t i = 0; i < mr; ++i) std::memcpy(abuf + i * kNtBlock, A + (m0 + i) * lda + p0, sizeof(T) * np);
    return NtABlock<T>{abuf, kNtBlock, 0, 0};
  }, B, ldb, C, ldc);
}

// gemm_nt with A in the packed-panel layout of pack_b (Ap[blk][m][NR], blk = pixel / NR), read in place.
template <typename T>
inline void gemm_nt_apacked(int64_t M, int64_t N, int64_t P, const T* Ap, const T* B, int64_t ldb, T* C,
                            int64_t ldc) {
  constexpr int NR = panel_width<T>();
  static_assert(kNtBlock % NR == 0, "pixel blocks must hold whole panels");
  gemm_nt_impl<T>(M, N, P, [&](int64_t m0, int64_t, int64_t p0, int64_t, T*) {
    return NtABlock<T>{Ap + (p0 / NR) * M * NR + m0 * NR, NR, NR, M * NR};
  }, B, ldb, C, ldc);
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
