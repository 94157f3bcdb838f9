// The convolutional MLP of VAN and its relatives (ConvFFN / MixFFN), inference, from the SADFFM front's pieces:
//   out = W_2 GELU(DW_K(W_1 x + b_1) + b_dw) + b_2  [+ x]
// x (N, C, H, W); W_1 (hid, C); DW_K depthwise K x K 'same' (zero-padded) on hid channels; W_2 (Co, hid).
// One kernel, banded like sadffm_infer_kernel: per (image, row band), x's band and its K/2-row halo is packed once;
// per group of kMlpGroup hidden channels U = W_1 x + b_1 on the haloed rows (a GEMM), the depthwise conv and GELU
// write h straight into packed GEMM panels, and W_2 consumes them: the hid-channel U and h never reach memory.
// The input is added while the band is in cache. Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/sadffm_dwconv.h"

namespace eimn::cpu::sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

constexpr int kMlpGroup = 12;  // hidden channels per U GEMM (two 6-row micro-tiles, as the gated front's pairs)

template <typename T>
void convmlp_infer_kernel(const T* x, const T* w1, const T* b1, const T* w_dw, const T* b_dw, const T* w2,
                          const T* b2, T* out, int64_t N, int C, int hid, int Co, int64_t H, int64_t W, int K,
                          bool add_input) {
  const int pad = K / 2;
  const int64_t HW = H * W, band = band_rows(N, H, W, 6144), nbands = (H + band - 1) / band, items = N * nbands;
  // W_1 packed per group of kMlpGroup rows (pack_a_blocks, for gemm_blk_packed), W_2 whole
  std::vector<T> w1k(size_t(hid) * C);
  for (int c0 = 0; c0 < hid; c0 += kMlpGroup) {
    const int gs = std::min(kMlpGroup, hid - c0);
    const std::vector<T> blk = pack_a_blocks<T>(w1 + int64_t(c0) * C, gs, C, C, 1);
    std::copy(blk.begin(), blk.end(), w1k.begin() + int64_t(c0) * C);
  }
  const std::vector<T> w2k = pack_a_blocks<T>(w2, Co, hid, hid, 1);
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    const int64_t maxPu = std::min(H, band + 2 * pad) * W;
    Scratch<T> xpack(panel_image_numel<T>(C, maxPu)), acc(size_t(band) * W);  // written before read
    GuardedBuf<T> ubuf(size_t(kMlpGroup) * maxPu), zeros(W);
    Scratch<T> hpack(panel_image_numel<T>(hid, band * W));  // lanes past the band's pixels never reach a result
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nbands, r0 = (it % nbands) * band, r1 = std::min(H, r0 + band);
      const int64_t ua = std::max<int64_t>(0, r0 - pad), ub = std::min(H, r1 + pad);
      const int64_t Pu = (ub - ua) * W, Pb = (r1 - r0) * W;
      pack_b<T>(C, Pu, x + n * C * HW + ua * W, HW, xpack.data());
      for (int c0 = 0; c0 < hid; c0 += kMlpGroup) {
        const int gs = std::min(kMlpGroup, hid - c0);
        gemm_blk_packed<T>(gs, C, Pu, w1k.data() + int64_t(c0) * C, xpack.data(), ubuf.data(), Pu, b1 + c0, false);
        for (int j = 0; j < gs; ++j) {
          const int c = c0 + j;
          dw_rows(ubuf.data() + int64_t(j) * Pu, ua, ub, r0, r1, W, K, w_dw + int64_t(c) * K * K, b_dw[c],
                  acc.data(), zeros.data());
          gate_to_panels<false, T, false>(acc.data(), nullptr, Pb, 0, c, hid, hpack.data());
        }
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
}

}  // namespace
}  // namespace eimn::cpu::sadffm
