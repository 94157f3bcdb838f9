// dw_mix forward for small images, channel-blocked: L channels (one 64-byte vector) of one image at a time, in a
// zero-padded [Hp][Wp][L] layout, so every tap is one vector FMA over L channels. The per-plane kernels
// (molrcm_dwplane.h) vectorise over a row of W pixels and lose most lanes when W is small (VAN's late stages run
// 14x14 and 7x7 images); here the width does not matter.
//
// Semantics as dw_mix (eimn_kernels/reference.py): r = DW_{K0,d0}(q) + b0; y = DW_{K1,d1}(r) + b1 on channels
// [0, c1), r on [c1, c1+c2), DW_{K2,d2}(r) + b2 on [c1+c2, C); every conv 'same' zero-padded, the second ones
// padding r. A block whose L channels span several groups runs each group's conv with the other lanes' weights
// zero. Private to csrc/cpu/molrcm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace molrcm {

// acc[y][x][:] += sum_taps w[tap][:] * src[y + ky*d][x + kx*d][:]; src addresses (-P, -P) of a padded block
// buffer (row stride Wp * L) whose interior is H x W, acc an H x W x L block (row stride lda_row). Four pixels at a
// time with their L-lane accumulators in registers across all taps: per tap one weight load, four source loads and
// four FMAs. Taps that read only the zero border for a register block are skipped (they add w * 0): on VAN's 7x7
// stage the dilated 7x7 (d 3, P 9) reaches the image with 3 of its 7 rows and about half its columns. Reads up to
// kBlockXB - 1 pixels past a row's end (the buffer needs that much slack after its last row).
constexpr int kBlockXB = 4;  // pixels per register block of dw_block_taps

template <typename T, int L>
inline void dw_block_taps(const T* __restrict src, int64_t Wp, int64_t H, int64_t W, int64_t P,
                          const T* __restrict w, int K, int64_t d, T* __restrict acc, int64_t lda_row) {
  constexpr int XB = kBlockXB;
  for (int64_t y = 0; y < H; ++y) {
    T* __restrict arow = acc + y * lda_row;
    // tap rows whose source row y + ky*d - P lies in the image
    const int ky0 = static_cast<int>(std::max<int64_t>(0, (P - y + d - 1) / d));
    const int ky1 = static_cast<int>(std::min<int64_t>(K, (P + H - 1 - y) / d + 1));
    for (int64_t x0 = 0; x0 < W; x0 += XB) {
      const int nx = static_cast<int>(std::min<int64_t>(XB, W - x0));
      // tap columns that reach the image for some pixel of the block: x0 + nx - 1 + kx*d >= P, x0 + kx*d <= P+W-1
      const int kx0 = static_cast<int>(std::max<int64_t>(0, (P - (x0 + nx - 1) + d - 1) / d));
      const int kx1 = static_cast<int>(std::min<int64_t>(K, (P + W - 1 - x0) / d + 1));
      alignas(64) T a[XB][L];
      for (int i = 0; i < XB; ++i)
#pragma omp simd
        for (int l = 0; l < L; ++l) a[i][l] = i < nx ? arow[(x0 + i) * L + l] : T(0);
      for (int ky = ky0; ky < ky1; ++ky) {
        const T* s_row = src + (y + ky * d) * Wp * L + x0 * L;
        for (int kx = kx0; kx < kx1; ++kx) {
          const T* __restrict wk = w + (ky * K + kx) * L;
          const T* __restrict s = s_row + kx * d * L;
          for (int i = 0; i < XB; ++i)  // pixels past W read the zero border or the next row: discarded
#pragma omp simd
            for (int l = 0; l < L; ++l) a[i][l] += wk[l] * s[i * L + l];
        }
      }
      for (int i = 0; i < nx; ++i)
#pragma omp simd
        for (int l = 0; l < L; ++l) arow[(x0 + i) * L + l] = a[i][l];
    }
  }
}

// Per-lane weights of a block of L channels starting at c0 for one depthwise conv applied to channels
// [g0, g0 + gn) (weights w: (gn, 1, K, K), bias b): tap-major [K*K][L] and [L]; other lanes zero.
template <typename T, int L>
inline void dw_block_weights(const T* w, const T* b, int K, int64_t g0, int64_t gn, int64_t c0, int64_t C, T* wb,
                             T* bb) {
  std::fill(wb, wb + K * K * L, T(0));
  for (int l = 0; l < L; ++l) {
    const int64_t c = c0 + l;
    if (c >= C || c < g0 || c >= g0 + gn) continue;
    for (int t = 0; t < K * K; ++t) wb[t * L + l] = w[(c - g0) * K * K + t];
    bb[l] += b[c - g0];
  }
}

// g: the DwMixGeom of molrcm_cpu.cpp (sizes, split, kernel sizes, dilations, paddings P0/P1/P2, Pm, Hp, Wp).
template <typename T, typename Geom>
void dw_mix_fwd_blocked(const Geom& g, const T* qp, const T* w0p, const T* b0p, const T* w1p, const T* b1p,
                        const T* w2p, const T* b2p, T* op) {
  constexpr int L = 64 / static_cast<int>(sizeof(T));  // one 64-byte vector of channels
  const int64_t HW = g.H * g.W, nb = (g.C + L - 1) / L, plane = g.Hp * g.Wp * L;
  // a padded block buffer's pixel (y, x) of the interior, and its (-P, -P) for a conv of padding P
  auto at = [&](T* buf, int64_t y, int64_t x) { return buf + ((g.Pm + y) * g.Wp + g.Pm + x) * L; };
  auto padded = [&](T* buf, int64_t P) { return buf + ((g.Pm - P) * g.Wp + (g.Pm - P)) * L; };
  at::parallel_for(0, g.N * nb, 1, [&](int64_t t0, int64_t t1) {
    // zero borders stay zero; interiors rewritten per block; slack for dw_block_taps' last register block
    std::vector<T> qb(plane + kBlockXB * L, T(0)), rb(plane + kBlockXB * L, T(0));
    std::vector<T> acc(HW * L), w0b(g.K0 * g.K0 * L), w1b(g.K1 * g.K1 * L), w2b(g.K2 * g.K2 * L);
    std::vector<T> b0b(L), ybias(L), idm(L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nb, c0 = (t % nb) * L, cl = std::min<int64_t>(L, g.C - c0);
      // q block in, transposed to [y][x][lane]; lanes past C zero
      for (int64_t y = 0; y < g.H; ++y)
        for (int64_t x = 0; x < g.W; ++x) {
          T* dst = at(qb.data(), y, x);
          for (int l = 0; l < L; ++l) dst[l] = l < cl ? qp[(n * g.C + c0 + l) * HW + y * g.W + x] : T(0);
        }
      // r = DW0(q) + b0 into rb's interior
      std::fill(b0b.begin(), b0b.end(), T(0));
      dw_block_weights<T, L>(w0p, b0p, g.K0, 0, g.C, c0, g.C, w0b.data(), b0b.data());
      for (int64_t p = 0; p < HW; ++p) std::copy(b0b.begin(), b0b.end(), acc.begin() + p * L);
      dw_block_taps<T, L>(padded(qb.data(), g.P0), g.Wp, g.H, g.W, g.P0, w0b.data(), g.K0, g.d0, acc.data(), g.W * L);
      for (int64_t y = 0; y < g.H; ++y)
        std::copy(acc.begin() + y * g.W * L, acc.begin() + (y + 1) * g.W * L, at(rb.data(), y, 0));
      // y = identity lanes' r + the groups' convs of r + their biases
      std::fill(ybias.begin(), ybias.end(), T(0));
      dw_block_weights<T, L>(w1p, b1p, g.K1, 0, g.c1, c0, g.C, w1b.data(), ybias.data());
      dw_block_weights<T, L>(w2p, b2p, g.K2, g.c1 + g.c2, g.c3, c0, g.C, w2b.data(), ybias.data());
      for (int l = 0; l < L; ++l) idm[l] = (c0 + l >= g.c1 && c0 + l < g.c1 + g.c2) ? T(1) : T(0);
      for (int64_t y = 0; y < g.H; ++y)
        for (int64_t x = 0; x < g.W; ++x) {
          const T* r = at(rb.data(), y, x);
          T* a = acc.data() + (y * g.W + x) * L;
#pragma omp simd
          for (int l = 0; l < L; ++l) a[l] = ybias[l] + idm[l] * r[l];
        }
      const bool has1 = g.c1 > 0 && c0 < g.c1, has2 = g.c3 > 0 && c0 + cl > g.c1 + g.c2;
      if (has1)
        dw_block_taps<T, L>(padded(rb.data(), g.P1), g.Wp, g.H, g.W, g.P1, w1b.data(), g.K1, g.d1, acc.data(), g.W * L);
      if (has2)
        dw_block_taps<T, L>(padded(rb.data(), g.P2), g.Wp, g.H, g.W, g.P2, w2b.data(), g.K2, g.d2, acc.data(), g.W * L);
      // out, transposed back
      for (int l = 0; l < cl; ++l) {
        T* o = op + (n * g.C + c0 + l) * HW;
        for (int64_t p = 0; p < HW; ++p) o[p] = acc[p * L + l];
      }
    }
  });
}

}  // namespace molrcm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
