// The convolutional MLP of VAN and its relatives (ConvFFN / MixFFN), inference, from the SADFFM front's pieces:
//   out = W_2 GELU(DW_K(W_1 x + b_1) + b_dw) + b_2  [+ x]
// x (N, C, H, W); W_1 (hid, C); DW_K depthwise K x K 'same' (zero-padded) on hid channels; W_2 (Co, hid).
// One kernel, banded like sadffm_infer_kernel: per (image, row band), x's band and its K/2-row halo is packed once;
// per group of kMlpGroup hidden channels U = W_1 x + b_1 on the haloed rows (a GEMM), the depthwise conv and GELU
// write h straight into packed GEMM panels, and W_2 consumes them: the hid-channel U and h never reach memory.
// The input is added while the band is in cache. Small images split the hidden channels into slices as well
// (convmlp_slices). Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/sadffm_dwconv.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

// Hidden channels per U GEMM: one micro-kernel call of kMR = 14 rows on AVX-512, two of 6 rows on AVX2.
constexpr int kMlpGroup = kMR == 14 ? 14 : 12;

// Slices of the hidden channels the work is split into as well as (image, band) items: 1 where there are at least
// 8 items; small images (VAN's late stages: one band per image) take 2, 4, 8 slices, each with its own partial
// W_2 h, summed in slice order afterwards. A function of the shapes only, like band_rows: the result does not
// depend on the number of threads.
inline int convmlp_slices(int64_t items, int hid) {
  const int64_t want = 8;
  int S = 1;
  while (items * S < want && hid / (2 * S) >= 2 * kMlpGroup) S *= 2;
  return S;
}

template <typename T>
void convmlp_infer_kernel(const T* x, const T* w1, const T* b1, const T* w_dw, const T* b_dw, const T* w2,
                          const T* b2, T* out, int64_t N, int C, int hid, int Co, int64_t H, int64_t W, int K,
                          bool add_input) {
  const int pad = K / 2;
  const int64_t HW = H * W, band = band_rows(N, H, W, 6144), nbands = (H + band - 1) / band, items = N * nbands;
  const int ngroups = (hid + kMlpGroup - 1) / kMlpGroup, S = convmlp_slices(items, hid);
  const int gps = (ngroups + S - 1) / S;  // groups per slice; slice s: hidden channels [cs[s], cs[s + 1])
  std::vector<int> cs(S + 1);
  for (int s = 0; s <= S; ++s) cs[s] = std::min(hid, s * gps * kMlpGroup);
  // W_1 packed per group of kMlpGroup rows (pack_a_blocks, for gemm_blk_packed); W_2's columns per slice, slice s
  // from element Co * cs[s] on (packed in place: no zero fill, no copies; at VAN's 7x7 stage, hid 1024, packing
  // is a quarter of the call)
  Scratch<T> w1k(size_t(hid) * C), w2k(size_t(hid) * Co);
  at::parallel_for(0, ngroups + S, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      if (j < ngroups) {
        const int c0 = int(j) * kMlpGroup, gs = std::min(kMlpGroup, hid - c0);
        pack_a_blocks_into<T>(w1 + int64_t(c0) * C, gs, C, C, 1, w1k.data() + int64_t(c0) * C);
      } else {
        const int s = int(j - ngroups);
        pack_a_blocks_into<T>(w2 + cs[s], Co, cs[s + 1] - cs[s], hid, 1, w2k.data() + int64_t(Co) * cs[s]);
      }
    }
  });
  // with slices, each writes its partial W_2 h (bias and input added in the reduction below), every element
  Scratch<T> part(S > 1 ? size_t(S) * N * Co * HW : 0);
  at::parallel_for(0, items * S, 1, [&](int64_t i0, int64_t i1) {
    const int64_t maxPu = std::min(H, band + 2 * pad) * W;
    const int maxhs = gps * kMlpGroup;
    Scratch<T> xpack(panel_image_numel<T>(C, maxPu)), acc(size_t(band) * W);  // written before read
    GuardedBuf<T> ubuf(size_t(kMlpGroup) * maxPu), zeros(W);
    // hpack: lanes past the band are never read out; cleared per task (clear_panel_tail)
    Scratch<T> hpack(panel_image_numel<T>(std::min(hid, maxhs), band * W));
    int64_t packed = -1;
    for (int64_t task = i0; task < i1; ++task) {
      const int64_t it = task / S;
      const int s = int(task % S), ca = cs[s], cb = cs[s + 1], hs = cb - ca;
      if (hs <= 0) continue;
      const int64_t n = it / nbands, r0 = (it % nbands) * band, r1 = std::min(H, r0 + band);
      const int64_t ua = std::max<int64_t>(0, r0 - pad), ub = std::min(H, r1 + pad);
      const int64_t Pu = (ub - ua) * W, Pb = (r1 - r0) * W;
      if (it != packed) {
        pack_b<T>(C, Pu, x + n * C * HW + ua * W, HW, xpack.data());
        packed = it;
      }
      clear_panel_tail(hpack.data(), hs, Pb);
      for (int c0 = ca; c0 < cb; c0 += kMlpGroup) {
        const int gs = std::min(kMlpGroup, cb - c0);
        gemm_blk_packed<T>(gs, C, Pu, w1k.data() + int64_t(c0) * C, xpack.data(), ubuf.data(), Pu, b1 + c0, false);
        for (int j = 0; j < gs; ++j) {
          const int c = c0 + j;
          dw_rows(ubuf.data() + int64_t(j) * Pu, ua, ub, r0, r1, W, K, w_dw + int64_t(c) * K * K, b_dw[c],
                  acc.data(), zeros.data());
          gate_to_panels<false, T, false>(acc.data(), nullptr, Pb, 0, c - ca, hs, hpack.data());
        }
      }
      if (S > 1) {
        gemm_blk_packed<T>(Co, hs, Pb, w2k.data() + int64_t(Co) * ca, hpack.data(),
                           part.data() + (s * N + n) * Co * HW + r0 * W, HW, nullptr, false);
        continue;
      }
      T* y = out + n * Co * HW + r0 * W;
      gemm_blk_packed<T>(Co, hid, Pb, w2k.data(), hpack.data(), y, HW, b2, false);
      if (add_input) {
        const T* xb = x + n * C * HW + r0 * W;
        for (int o = 0; o < Co; ++o) {
          T* __restrict yo = y + int64_t(o) * HW;
          const T* __restrict xo = xb + int64_t(o) * HW;
#pragma omp simd
          for (int64_t p = 0; p < Pb; ++p) yo[p] += xo[p];
        }
      }
    }
  });
  if (S == 1) return;
  // out = b_2 + the slices' partials in slice order [+ x]
  at::parallel_for(0, N * Co, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / Co, o = r % Co;
      T* __restrict y = out + r * HW;
      const T bias = b2[o];
#pragma omp simd
      for (int64_t p = 0; p < HW; ++p) y[p] = bias;
      for (int s = 0; s < S; ++s) {
        const T* __restrict ps = part.data() + (s * N + n) * Co * HW + o * HW;
#pragma omp simd
        for (int64_t p = 0; p < HW; ++p) y[p] += ps[p];
      }
      if (add_input) {
        const T* __restrict xo = x + (n * C + o) * HW;
#pragma omp simd
        for (int64_t p = 0; p < HW; ++p) y[p] += xo[p];
      }
    }
  });
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
