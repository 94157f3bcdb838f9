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
// 154. AMX-BF16 tiles read exactly these layouts (A: 16 rows x 32 bf16 at stride 4 KP; B: a pair panel is a tile
// of KP rows x 64 bytes) and are what make bfloat16 pay on those CPUs; the VM this was written on hides AMX (CPUID
// 7.0 EDX bits 22/24 clear, XCR0 without tile state), so no AMX engine ships untested.
//
// Layouts (pair = two bfloat16 in one uint32: element k in the low half, k + 1 in the high half; zero past K):
//   Weights::a : row-major pairs, row m at a[m * KP], KP = ceil(K / 2); kRows zero rows past M (the micro-kernel
//                computes 4, 8, 12 or 16 rows from any first row).
//   pair panel : one pack_b panel of NR = 16 pixels as [KP][16] pairs (64 bytes per pair row: one VDPBF16PS
//                operand); an image band as [blk][KP][16] (pack_pairs).
// Every reduction order depends only on the shapes (deterministic).
#pragma once
#include "cpu/cpu_isa.h"
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
constexpr int kRows = 16;  // rows per micro-kernel call: 16 accumulators + the pair row + broadcasts in 32 zmm

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

// A (M x K, element (m, k) at A[m * rs + k * cs]) as bfloat16 pairs.
struct Weights {
  std::vector<uint32_t> a;
  int64_t M = 0, K = 0, KP = 0;
  const uint32_t* row(int64_t m) const { return a.data() + m * KP; }
};
inline Weights pack(const float* A, int64_t M, int64_t K, int64_t rs, int64_t cs) {
  Weights w;
  w.M = M, w.K = K, w.KP = (K + 1) / 2;
  w.a.assign(size_t(M + kRows) * w.KP, 0u);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      w.a[m * w.KP + k / 2] |= uint32_t(to_bf16(A[m * rs + k * cs])) << (16 * (k & 1));
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

// MR rows of W from m0 on (n <= MR of them handed on) times one pair panel: row m goes to st(m, lo, hi) (two
// halves of 8 pixels, as the float32 micro-kernels hand them) or st(m, row) where st takes a whole 64-byte row.
template <int MR, typename St>
EIMN_BF16_TARGET inline void rows_mr(int64_t m0, int n, const Weights& w, const uint32_t* pairs, St& st) {
  const int64_t KP = w.KP;
  __m512 acc[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  const uint32_t* a = w.row(m0);
  for (int64_t j = 0; j < KP; ++j) {
    const __m512bh b = (__m512bh)_mm512_loadu_si512(pairs + j * kNR);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32(int(a[i * KP + j])), b);
  }
  for (int i = 0; i < n; ++i) {
    if constexpr (std::is_invocable_v<St&, int64_t, f32x16>) {
      st(m0 + i, (f32x16)acc[i]);
    } else {
      st(m0 + i, (vreg<float>)_mm512_castps512_ps256(acc[i]), (vreg<float>)_mm512_extractf32x8_ps(acc[i], 1));
    }
  }
}

// Rows [mb, me) of W times one pair panel, kRows at a time (a last group of fewer rows in a narrower kernel).
template <typename St>
EIMN_BF16_TARGET inline void rows(int64_t mb, int64_t me, const Weights& w, const uint32_t* pairs, St& st) {
  for (int64_t m0 = mb; m0 < me; m0 += kRows) {
    const int n = int(me - m0 < kRows ? me - m0 : kRows);
    if (n > 12) rows_mr<16>(m0, n, w, pairs, st);
    else if (n > 8) rows_mr<12>(m0, n, w, pairs, st);
    else if (n > 4) rows_mr<8>(m0, n, w, pairs, st);
    else rows_mr<4>(m0, n, w, pairs, st);
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

// C[me - mb x P] (ldc) = W rows [mb, me) * B + bias, B given as pair panels [blk][KP][16] (pack_pairs).
EIMN_BF16_TARGET inline void gemm_pairs(int64_t mb, int64_t me, const Weights& w, int64_t P, const uint32_t* Bpairs,
                                        float* C, int64_t ldc, const float* bias) {
  for (int64_t blk = 0; blk * kNR < P; ++blk) {
    const int64_t p0 = blk * kNR;
    PairStore st{C + p0, ldc, mb, P - p0 < kNR ? P - p0 : kNR, bias};
    rows(mb, me, w, Bpairs + blk * w.KP * kNR, st);
  }
}

// The same with B as float32 panels of pack_b ([blk][K][16]): each panel converted once, into a thread-local buffer.
EIMN_BF16_TARGET inline void gemm_panels(int64_t mb, int64_t me, const Weights& w, int64_t P, const float* Bp,
                                         float* C, int64_t ldc, const float* bias) {
  thread_local std::vector<uint32_t> buf;
  if (int64_t(buf.size()) < w.KP * kNR) buf.resize(w.KP * kNR);
  for (int64_t blk = 0; blk * kNR < P; ++blk) {
    const int64_t p0 = blk * kNR;
    to_pairs(Bp + blk * w.K * kNR, w.K, buf.data());
    PairStore st{C + p0, ldc, mb, P - p0 < kNR ? P - p0 : kNR, bias};
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
template <typename T> inline bf16::Weights bf16_weights(const T* A, int64_t M, int64_t K) {
  if constexpr (std::is_same_v<T, float>) return bf16::pack(A, M, K, K, 1);
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
