// bfloat16 GEMMs of the CPU inference path (eimn_kernels.optimize_for_inference(model, precision="bf16")): the
// 1x1 convolutions chosen by PSNR (MOLRCM's Wf, Wo; SADFFM's W_in, W_out: 83% of a block's GEMM work) with A
// (weights) and B (activations) rounded to bfloat16 (round to nearest even) and every product summed in float32
// (VDPBF16PS; half the bytes of B). Everything around the GEMMs (bias, GELU, SiLU, gates, depthwise convolutions,
// LayerNorm, DFFM) stays float32: the epilogue functors are those of the float32 kernels.
//
// Engine: AVX512-BF16 (Cooper Lake, Sapphire Rapids and later, Zen 4), compiled with a target attribute so that a
// build for any x86-64 carries it; the ops call it only where available() (CPUID + OS support of the 512-bit
// state). VDPBF16PS does two products per lane, but issues at half the rate of a float32 FMA on Sapphire/Emerald
// Rapids: measured here (2-core Emerald Rapids VM, single thread, M64 K64) 80 GFLOP/s against the float32 kernels'
// 154. AMX-BF16 tiles (B: a pair panel is a tile of KP rows x 64 bytes; A would need its rows back in row-major
// pairs) are what make bfloat16 pay on those CPUs; the VM this was written on hides AMX (CPUID 7.0 EDX bits 22/24
// clear, XCR0 without tile state), so no AMX engine ships untested. On Zen 5 VDPBF16PS issues at the FMA rate:
// twice the float32 products per cycle.
//
// Layouts (pair = two bfloat16 in one uint32: element k in the low half, k + 1 in the high half; zero past K):
//   Weights::a : k-major blocks of kRows rows: the rows are cut into groups (the whole matrix, or the row ranges a
//                caller runs one at a time, as SADFFM's 12-row W_in groups), each group into blocks of kRows rows
//                from its first row; block b holds its rows' pairs as [KP][kRows] (zero rows past the group's
//                end), so a micro-kernel's broadcasts walk one pointer through consecutive addresses (one pointer
//                per row, as row-major pairs need, spilled 14 of 16 pointers to xmm registers).
//   pair panel : one pack_b panel of NR = 16 pixels as [KP][16] pairs (64 bytes per pair row: one VDPBF16PS
//                operand); an image band as [blk][KP][16] (pack_pairs).
// Micro-kernels: kRows rows times two pair panels (28 accumulators: one broadcast feeds two VDPBF16PS); a last
// odd or partial panel alone. On Zen 5, where VDPBF16PS issues at the FMA rate (two products per lane, so twice
// the float32 rate), pairs of panels over blocked weights run 1.3-1.4x the one-panel row-major kernel (M64 K170:
// ~300 -> ~400 GFLOP/s single-threaded).
// Every reduction order depends only on the shapes (deterministic).
#pragma once
#include "cpu/cpu_isa.h"
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/cpu_gemm.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define EIMN_BF16_ENGINE 1
#define EIMN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#else
#define EIMN_BF16_ENGINE 0
#define EIMN_BF16_TARGET
#endif

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace bf16 {

constexpr int kNR = 16;    // pixels per panel: pack_b's float32 panel width with AVX-512 or AVX2 (2 x 32 bytes)
constexpr int kRows = 14;  // rows per block: two panels' 28 accumulators + two pair rows + a broadcast in 32 zmm

// Whether this CPU and OS run the AVX512-BF16 engine (the hardware check cached); EIMN_CPU_BF16=off hides it (how
// the tests reach the "no bf16 instructions" errors on a CPU that has them).
inline bool available() {
#if EIMN_BF16_ENGINE
  const char* env = std::getenv("EIMN_CPU_BF16");
  if (env && std::strcmp(env, "off") == 0) return false;
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    const bool bf = (a >> 5) & 1;
    if (!(f && dq && bw && vl && bf)) return false;
    __get_cpuid(1, &a, &b, &c, &d);
    if (!((c >> 27) & 1)) return false;  // OSXSAVE
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM state enabled by the OS
  }();
  return ok;
#else
  return false;
#endif
}

// float -> bfloat16, round to nearest even (NaN stays NaN), as VCVTNE2PS2BF16 rounds normal numbers.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// A (M x K, element (m, k) at A[m * rs + k * cs]) as bfloat16 pairs in blocks (layout above); G: rows per group
// (0: the whole matrix).
struct Weights {
  std::vector<uint32_t> a;
  int64_t M = 0, K = 0, KP = 0, G = 0, bpg = 0;  // groups of G rows, bpg blocks each
  // Offset in a of the block that holds row m (its first row: m0 = a group's first row plus a multiple of kRows).
  int64_t block_offset(int64_t m) const { return ((m / G) * bpg + (m % G) / kRows) * kRows * KP; }
  const uint32_t* block(int64_t m0) const { return a.data() + block_offset(m0); }
};
inline Weights pack(const float* A, int64_t M, int64_t K, int64_t rs, int64_t cs, int64_t G = 0) {
  Weights w;
  w.M = M, w.K = K, w.KP = (K + 1) / 2, w.G = G > 0 ? G : (M > 0 ? M : 1), w.bpg = (w.G + kRows - 1) / kRows;
  w.a.assign(size_t((M + w.G - 1) / w.G * w.bpg) * kRows * w.KP, 0u);
  for (int64_t m = 0; m < M; ++m) {
    uint32_t* blk = w.a.data() + w.block_offset(m);
    const int64_t i = (m % w.G) % kRows;  // row m's lane in its block
    for (int64_t k = 0; k < K; ++k) blk[(k / 2) * kRows + i] |= uint32_t(to_bf16(A[m * rs + k * cs])) << (16 * (k & 1));
  }
  return w;
}

#if EIMN_BF16_ENGINE
// Pair-row index: lane 2p takes pixel p of the even row, lane 2p + 1 pixel p of the odd row (the two rows are the
// low and high halves of VCVTNE2PS2BF16's result).
EIMN_BF16_TARGET inline __m512i interleave_index() {
  alignas(64) static const uint16_t idx[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                               8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_load_si512(idx);
}

// Two rows of 16 float32 pixels -> one pair row.
EIMN_BF16_TARGET inline __m512i pair_row(__m512 even, __m512 odd, __m512i idx) {
  return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

// One float32 panel of pack_b (K x 16) -> pairs (KP x 16).
EIMN_BF16_TARGET inline void to_pairs(const float* bp, int64_t K, uint32_t* out) {
  const __m512i idx = interleave_index();
  int64_t j = 0;
  for (; 2 * j + 1 < K; ++j)
    _mm512_storeu_si512(out + j * kNR,
                        pair_row(_mm512_loadu_ps(bp + 2 * j * kNR), _mm512_loadu_ps(bp + (2 * j + 1) * kNR), idx));
  if (2 * j < K) _mm512_storeu_si512(out + j * kNR, pair_row(_mm512_loadu_ps(bp + 2 * j * kNR), _mm512_setzero_ps(), idx));
}

// B (K x P, row stride ldb) -> pair panels [blk][KP][16], zero past P (pack_b's layout, in pairs). Two pair rows
// (four rows of B) at a time across the whole width: four sequential read streams, as pack_b reads (one panel at
// a time would read K rows a large stride apart per 64 bytes).
// Row k of B at pixels [p0, p0 + 16) under mask m (zero past K). A function, not a lambda: a lambda does not take
// its enclosing function's target attribute.
EIMN_BF16_TARGET inline __m512 load_b_row(const float* B, int64_t k, int64_t K, int64_t ldb, int64_t p0, __mmask16 m) {
  return k < K ? _mm512_maskz_loadu_ps(m, B + k * ldb + p0) : _mm512_setzero_ps();
}

EIMN_BF16_TARGET inline void pack_pairs(int64_t K, int64_t P, const float* B, int64_t ldb, uint32_t* out) {
  const __m512i idx = interleave_index();
  const int64_t KP = (K + 1) / 2, nblk = (P + kNR - 1) / kNR;
  for (int64_t j0 = 0; j0 < KP; j0 += 2) {
    const int64_t jn = KP - j0 < 2 ? KP - j0 : 2;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t p0 = blk * kNR, np = P - p0 < kNR ? P - p0 : kNR;
      const __mmask16 m = np == kNR ? __mmask16(0xffff) : __mmask16((1u << np) - 1);
      uint32_t* d = out + (blk * KP + j0) * kNR;
      for (int64_t j = 0; j < jn; ++j) {
        const int64_t k = 2 * (j0 + j);
        _mm512_storeu_si512(d + j * kNR, pair_row(load_b_row(B, k, K, ldb, p0, m), load_b_row(B, k + 1, K, ldb, p0, m),
                                                  idx));
      }
    }
  }
}

typedef float f32x16 __attribute__((vector_size(64)));

// Hands accumulator row c (W's row m) to st: whole (st(m, row)) where st takes a 64-byte row, else as two halves of
// 8 pixels (st(m, lo, hi)), as the float32 micro-kernels hand them.
template <typename St> EIMN_BF16_TARGET __attribute__((always_inline)) inline void hand_row(St& st, int64_t m, __m512 c) {
  if constexpr (std::is_invocable_v<St&, int64_t, f32x16>) {
    st(m, (f32x16)c);
  } else {
    st(m, (vreg<float>)_mm512_castps512_ps256(c), (vreg<float>)_mm512_extractf32x8_ps(c, 1));
  }
}

// MR rows of the block at m0 (n <= MR of them handed on) times one pair panel.
template <int MR, typename St>
EIMN_BF16_TARGET inline void rows_mr(int64_t m0, int n, const Weights& w, const uint32_t* pairs, St& st) {
  const int64_t KP = w.KP;
  __m512 acc[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  const uint32_t* a = w.block(m0);
  for (int64_t j = 0; j < KP; ++j, a += kRows) {
    const __m512bh b = (__m512bh)_mm512_loadu_si512(pairs + j * kNR);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32(int(a[i])), b);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    if (i < n) hand_row(st, m0 + i, acc[i]);
}

// rows_mr on two pair panels p0, p1 (st0 / st1 get their rows): each broadcast of W feeds two VDPBF16PS. Every
// output is the same chain as in rows_mr (same bits).
template <int MR, typename St0, typename St1>
EIMN_BF16_TARGET inline void rows_mr2(int64_t m0, int n, const Weights& w, const uint32_t* p0, const uint32_t* p1,
                                      St0& st0, St1& st1) {
  const int64_t KP = w.KP;
  __m512 c[MR], d[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c[i] = d[i] = _mm512_setzero_ps();
  const uint32_t* a = w.block(m0);
  for (int64_t j = 0; j < KP; ++j, a += kRows) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(p0 + j * kNR), b1 = (__m512bh)_mm512_loadu_si512(p1 + j * kNR);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh s = (__m512bh)_mm512_set1_epi32(int(a[i]));
      c[i] = _mm512_dpbf16_ps(c[i], s, b0);
      d[i] = _mm512_dpbf16_ps(d[i], s, b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    if (i < n) hand_row(st0, m0 + i, c[i]);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    if (i < n) hand_row(st1, m0 + i, d[i]);
}

// Rows [mb, me) of W (mb a group's first row, me its end or M) times one pair panel, a block at a time (a last block
// of fewer rows in a narrower kernel).
template <typename St>
EIMN_BF16_TARGET inline void rows(int64_t mb, int64_t me, const Weights& w, const uint32_t* pairs, St& st) {
  for (int64_t m0 = mb; m0 < me; m0 += kRows) {
    const int n = int(me - m0 < kRows ? me - m0 : kRows);
    if (n > 12) rows_mr<14>(m0, n, w, pairs, st);
    else if (n > 8) rows_mr<12>(m0, n, w, pairs, st);
    else if (n > 4) rows_mr<8>(m0, n, w, pairs, st);
    else rows_mr<4>(m0, n, w, pairs, st);
  }
}

// rows on two pair panels at once (st0 / st1 get their rows; results as two rows calls).
template <typename St0, typename St1>
EIMN_BF16_TARGET inline void rows2(int64_t mb, int64_t me, const Weights& w, const uint32_t* p0, const uint32_t* p1,
                                   St0& st0, St1& st1) {
  for (int64_t m0 = mb; m0 < me; m0 += kRows) {
    const int n = int(me - m0 < kRows ? me - m0 : kRows);
    if (n > 12) rows_mr2<14>(m0, n, w, p0, p1, st0, st1);
    else if (n > 8) rows_mr2<12>(m0, n, w, p0, p1, st0, st1);
    else if (n > 4) rows_mr2<8>(m0, n, w, p0, p1, st0, st1);
    else rows_mr2<4>(m0, n, w, p0, p1, st0, st1);
  }
}

// C rows [0, me - mb) (row stride ldc, np <= 16 pixels) = W rows [mb, me) times one pair panel (+ bias[r]).
struct PairStore {
  float* c;
  int64_t ldc, mb, np;
  const float* bias;
  EIMN_BF16_TARGET void operator()(int64_t m, f32x16 r) const {
    const int64_t i = m - mb;
    if (bias) r += bias[i];
    if (np == kNR) _mm512_storeu_ps(c + i * ldc, (__m512)r);
    else _mm512_mask_storeu_ps(c + i * ldc, __mmask16((1u << np) - 1), (__m512)r);
  }
};

// C[me - mb x P] (ldc) = W rows [mb, me) * B + bias, B given as pair panels [blk][KP][16] (pack_pairs): pairs of
// full panels, then the last ones alone.
EIMN_BF16_TARGET inline void gemm_pairs(int64_t mb, int64_t me, const Weights& w, int64_t P, const uint32_t* Bpairs,
                                        float* C, int64_t ldc, const float* bias) {
  const int64_t pstride = w.KP * kNR;
  int64_t blk = 0;
  for (; (blk + 2) * kNR <= P; blk += 2) {
    PairStore s0{C + blk * kNR, ldc, mb, kNR, bias}, s1{C + (blk + 1) * kNR, ldc, mb, kNR, bias};
    rows2(mb, me, w, Bpairs + blk * pstride, Bpairs + (blk + 1) * pstride, s0, s1);
  }
  for (; blk * kNR < P; ++blk) {  // a last full panel, a partial one
    PairStore st{C + blk * kNR, ldc, mb, std::min(P - blk * kNR, int64_t(kNR)), bias};
    rows(mb, me, w, Bpairs + blk * pstride, st);
  }
}

// The same with B as float32 panels of pack_b ([blk][K][16]): two panels at a time converted into a thread-local
// buffer.
EIMN_BF16_TARGET inline void gemm_panels(int64_t mb, int64_t me, const Weights& w, int64_t P, const float* Bp,
                                         float* C, int64_t ldc, const float* bias) {
  const int64_t pstride = w.KP * kNR;
  thread_local std::vector<uint32_t> buf;
  if (int64_t(buf.size()) < 2 * pstride) buf.resize(2 * pstride);
  int64_t blk = 0;
  for (; (blk + 2) * kNR <= P; blk += 2) {
    to_pairs(Bp + blk * w.K * kNR, w.K, buf.data());
    to_pairs(Bp + (blk + 1) * w.K * kNR, w.K, buf.data() + pstride);
    PairStore s0{C + blk * kNR, ldc, mb, kNR, bias}, s1{C + (blk + 1) * kNR, ldc, mb, kNR, bias};
    rows2(mb, me, w, buf.data(), buf.data() + pstride, s0, s1);
  }
  for (; blk * kNR < P; ++blk) {  // a last full panel, a partial one
    to_pairs(Bp + blk * w.K * kNR, w.K, buf.data());
    PairStore st{C + blk * kNR, ldc, mb, std::min(P - blk * kNR, int64_t(kNR)), bias};
    rows(mb, me, w, buf.data(), st);
  }
}
#endif  // EIMN_BF16_ENGINE

}  // namespace bf16
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// The engine's front for kernels templated on the element type: float runs it; double compiles to nothing (the ops
// reject bf16 with float64 before any kernel runs), as does a build without the engine (available() is false).
template <typename T> inline bf16::Weights bf16_weights(const T* A, int64_t M, int64_t K, int64_t G = 0) {
  if constexpr (std::is_same_v<T, float>) return bf16::pack(A, M, K, K, 1, G);
  return bf16::Weights();
}
template <typename T> inline void bf16_pack_pairs(int64_t K, int64_t P, const T* B, int64_t ldb, uint32_t* out) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::pack_pairs(K, P, B, ldb, out);
#endif
}
template <typename T, typename St>
inline void bf16_rows(int64_t mb, int64_t me, const bf16::Weights& w, const uint32_t* pairs, St& st) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::rows(mb, me, w, pairs, st);
#endif
}
template <typename T, typename St0, typename St1>
inline void bf16_rows2(int64_t mb, int64_t me, const bf16::Weights& w, const uint32_t* p0, const uint32_t* p1,
                       St0& st0, St1& st1) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::rows2(mb, me, w, p0, p1, st0, st1);
#endif
}
template <typename T>
inline void bf16_to_pairs(const T* bp, int64_t K, uint32_t* out) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::to_pairs(bp, K, out);
#endif
}
template <typename T>
inline void bf16_gemm_panels(int64_t mb, int64_t me, const bf16::Weights& w, int64_t P, const T* Bp, T* C,
                             int64_t ldc, const T* bias) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::gemm_panels(mb, me, w, P, Bp, C, ldc, bias);
#endif
}
template <typename T>
inline void bf16_gemm_pairs(int64_t mb, int64_t me, const bf16::Weights& w, int64_t P, const uint32_t* Bpairs, T* C,
                            int64_t ldc, const T* bias) {
#if EIMN_BF16_ENGINE
  if constexpr (std::is_same_v<T, float>) bf16::gemm_pairs(mb, me, w, P, Bpairs, C, ldc, bias);
#endif
}
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
