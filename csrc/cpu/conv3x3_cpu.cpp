// CPU (OpenMP) kernel of conv3x3_shuffle_forward, float32 / float64: a 'same' 3x3 convolution (stride 1, padding 1,
// dilation 1, groups 1) with its output pixel-shuffled by r,
//   out = pixel_shuffle(conv2d(x, w, b, padding=1), r)     r = 1: the plain convolution
// the tail of an SR network (EIMN's tail conv and PixelShuffle upsampler; inference only). Schema:
// csrc/eimn_ops.cpp; reference: F.pixel_shuffle(F.conv2d(x, w, b, padding=1), r).
//
// Layout: contiguous NCHW x (N, C, H, W); w (Co, C, 3, 3), b (Co), Co divisible by r * r; out (N, Co / r^2, rH, rW).
// The convolution is a GEMM per segment of NR pixels of an output row without an im2col copy: each thread keeps
// zero-padded copies of the three source rows y - 1 .. y + 1 (all C channels; one new row per output row), from
// which every tap's panel row is one unaligned load at a fixed offset (conv_rows: the GEMM micro-kernel's register
// blocking, cpu_gemm.h, with the K loop over taps and channels). The Co rows go with the bias to an L1 panel, and
// from there each group of r rows of one shuffled channel is interleaved into one contiguous row of out.
// Work items are output rows (image, y), dealt in contiguous ranges to the threads; no result depends on the
// thread count. Against PyTorch's CPU convolution (oneDNN) plus a pixel-shuffle pass: 3.19 GFLOP at EIMN_A x4 720p.
#include "cpu/cpu_isa.h"
#include "cpu/cpu_register.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_checks.h"
#include "cpu/cpu_gemm.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace conv3x3 {
namespace {

using at::Tensor;

constexpr const char* kOp = "conv3x3_shuffle cpu";

// Panels per micro-kernel call, and rows: two panels of 14 rows where the GEMM takes two (AVX-512: 28 of its 32
// registers), else one of kMR (AVX2: 6 rows of two 32-byte halves, 12 of its 16 registers).
constexpr int kNP = kTwoPanels ? 2 : 1;

// Rows [m0, m0 + MR) of the convolution on kNP panels of NR pixels from column x0 of one output row:
// op[p][m][NR] = b[m] + sum_{ky, kx, c} w[m][c][ky][kx] * x[c][y + ky - 1][x0 + p NR + j + kx - 1]. rows[ky]: the
// padded copy of source row y + ky - 1 (C rows of ldr values, column j + 1 holding x's column j, zero outside), so
// every tap is one unaligned panel-row load at a fixed offset: no im2col copy (a 9 C x NR panel per segment, built
// and read back through L2, took a quarter of the time). a: the weight packed k-major (a[k Co + m], k = (ky 3 + kx)
// C + c). Each output value is one chain of FMAs over k in that order, then the bias.
template <typename T, int MR>
void conv_rows(const T* const* rows, int64_t ldr, int64_t C, const T* a, int64_t Co, int64_t m0, int64_t x0,
               const T* b, T* op) {
#if defined(__AVX512F__)
  typedef T V __attribute__((vector_size(64)));  // one panel row
#else
  typedef T V __attribute__((vector_size(32)));  // half a panel row (GCC's 64-byte vectors on AVX2 went via memory)
#endif
  constexpr int64_t NR = panel_width<T>(), L = int64_t(sizeof(V) / sizeof(T)), NV = kNP * NR / L;
  V acc[NV][MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[v][i] = V{};
  for (int t = 0; t < 9; ++t) {
    const T* src = rows[t / 3] + x0 + t % 3;  // tap (ky, kx) = (t / 3, t % 3): column offset kx - 1 + 1
    const T* at = a + int64_t(t) * C * Co + m0;
    for (int64_t c = 0; c < C; ++c) {
      V bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = load_vec<V>(src + c * ldr + v * L);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T w = at[c * Co + i];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[v][i] += w * bv[v];
      }
    }
  }
  // vector v holds pixels [v L, (v + 1) L) of the kNP panels: panel v L / NR, offset v L % NR
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      store_vec(op + ((v * L / NR) * Co + m0 + i) * NR + v * L % NR, acc[v][i] + b[m0 + i]);
}

// conv_rows with MR = mr (1 <= mr <= kMR) chosen at run time.
template <typename T, int MR = kMR>
void conv_rows_n(int mr, const T* const* rows, int64_t ldr, int64_t C, const T* a, int64_t Co, int64_t m0,
                 int64_t x0, const T* b, T* op) {
  if constexpr (MR >= 1) {
    if (mr == MR) return conv_rows<T, MR>(rows, ldr, C, a, Co, m0, x0, b, op);
    return conv_rows_n<T, MR - 1>(mr, rows, ldr, C, a, Co, m0, x0, b, op);
  }
}

// Output rows of segment x0 (cnt <= NR pixels) of row y from the panel op[Co][NR] into out (N, Co / r^2, rH, rW):
// shuffled channel c, sub-row i takes conv channels c r^2 + i r + j (j < r) interleaved. Each row of r * cnt values
// is interleaved in tmp (L1, r * NR values) and stored in whole vectors, streaming where `stream` and aligned (the
// output is read only after the whole image); scalar stores into out's lines ran at a third of that.
template <typename T>
void store_shuffled(const T* op, int64_t Co, int64_t r, int64_t n, int64_t H, int64_t W, int64_t y, int64_t x0,
                    int64_t cnt, T* out, T* tmp, bool stream) {
  constexpr int64_t NR = panel_width<T>();
  typedef T V __attribute__((vector_size(64)));
  constexpr int64_t L = 64 / sizeof(T);
  const int64_t Cs = Co / (r * r), Ho = H * r, Wo = W * r, len = r * cnt;
  for (int64_t c = 0; c < Cs; ++c)
    for (int64_t i = 0; i < r; ++i) {
      const T* src = op + (c * r * r + i * r) * NR;
      for (int64_t j = 0; j < r; ++j)
        for (int64_t w = 0; w < NR; ++w) tmp[w * r + j] = src[j * NR + w];
      T* dst = out + ((n * Cs + c) * Ho + y * r + i) * Wo + x0 * r;
      const bool st = stream && len % L == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0;
      for (int64_t e = 0; e < len; e += L) {
        const V v = load_vec<V>(tmp + e);
        if (st) stream_vec(dst + e, v);
        else store_vec_first(dst + e, v, len - e);
      }
    }
}

template <typename T>
void conv3x3_fwd_impl(const Tensor& x, const Tensor& wk, const Tensor& b, int64_t r, Tensor& out) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Co = wk.size(0), K = 9 * C;
  const int64_t HW = H * W, nseg = (W + NR - 1) / NR;
  // a padded row: column 0 and columns past W zero; long enough for the last call's kNP panels at offset 2
  const int64_t nseg_np = (nseg + kNP - 1) / kNP * kNP, ldr = nseg_np * NR + 2;
  const T *xp = x.data_ptr<T>(), *bp = b.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  const std::vector<T> ap = pack_a(wk.data_ptr<T>(), Co, K, K, 1);  // k-major
  // row blocks of at most kMR, as equal as they go (48 rows: 12 x 4, not 14 x 3 + 6)
  const int64_t nblk = (Co + kMR - 1) / kMR;
  const bool stream = stream_output(int64_t(sizeof(T)) * out.numel());
  at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
    // ring of the three source rows' padded copies (slot: row index mod 3), and a zero row for rows outside
    std::vector<T> ring(3 * C * ldr, T(0)), zero(C * ldr, T(0)), opan(kNP * Co * NR), tmp(r * NR + 64 / sizeof(T));
    int64_t held[3] = {-1, -1, -1};  // the image row * H + row each slot holds
    auto source = [&](int64_t n, int64_t sy) -> const T* {
      if (sy < 0 || sy >= H) return zero.data();
      const int64_t slot = sy % 3;
      T* d = ring.data() + slot * C * ldr;
      if (held[slot] != n * H + sy) {
        const T* s = xp + (n * C) * HW + sy * W;
        for (int64_t c = 0; c < C; ++c) std::memcpy(d + c * ldr + 1, s + c * HW, sizeof(T) * W);
        held[slot] = n * H + sy;
      }
      return d;
    };
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t n = row / H, y = row % H;
      const T* rows[3] = {source(n, y - 1), source(n, y), source(n, y + 1)};
      for (int64_t s = 0; s < nseg; s += kNP) {
        const int64_t x0 = s * NR;
        for (int64_t j = 0; j < nblk; ++j) {
          const int64_t m0 = Co * j / nblk, m1 = Co * (j + 1) / nblk;
          conv_rows_n<T>(int(m1 - m0), rows, ldr, C, ap.data(), Co, m0, x0, bp, opan.data());
        }
        for (int64_t p = 0; p < kNP && s + p < nseg; ++p) {
          const int64_t xs = x0 + p * NR;
          store_shuffled(opan.data() + p * Co * NR, Co, r, n, H, W, y, xs, std::min(NR, W - xs), outp, tmp.data(),
                         stream);
        }
      }
    }
    stream_fence();
  });
}

Tensor conv3x3_shuffle_forward(const Tensor& x_, const Tensor& w, const Tensor& b, int64_t r) {
  check_image(x_, kOp, "x");
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3);
  TORCH_CHECK(w.dim() == 4, kOp, ": w must be (Co, C, 3, 3), got ", w.sizes());
  const int64_t Co = w.size(0);
  check_like(w, kOp, "w", x_, {Co, C, 3, 3});
  check_like(b, kOp, "b", x_, {Co});
  TORCH_CHECK(r >= 1 && Co % (r * r) == 0, kOp, ": the upscale factor r must be >= 1 and divide the ", Co,
              " output channels by r * r, got r = ", r);
  Tensor x = x_.contiguous();
  Tensor out = at::empty({N, Co / (r * r), H * r, W * r}, x.options());
  if (Co == 0) return out;
  // the weight with k = (ky * 3 + kx) * C + c, conv_rows' order
  Tensor wk = w.permute({0, 2, 3, 1}).reshape({Co, 9 * C}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_shuffle_forward", [&] {
    conv3x3_fwd_impl<scalar_t>(x, wk, b.contiguous(), r, out);
  });
  return out;
}

}  // namespace
}  // namespace conv3x3
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// This level's kernel of conv3x3_shuffle_forward (cpu_register.h; cpu_dispatch.cpp registers one level's).
void register_conv3x3(torch::Library& m) { m.impl("conv3x3_shuffle_forward", &conv3x3::conv3x3_shuffle_forward); }
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
