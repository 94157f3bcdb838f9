// SADFFM CPU kernels, whole layer: the single-kernel inference path (h produced band by band into packed panels and
// consumed at once by W_out: h never in memory), the two kernels back to back with h in packed panels (inference
// on small inputs, and training), and the training stash's layout.
// Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/sadffm_dffm.h"
#include "cpu/sadffm_gated.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

// Whole SADFFM layer, forward only (inference): h = gated_dwconv(x) is produced band by band into packed GEMM
// panels and consumed at once by y = W_out h + b_out, so h (N x hid x H x W) never goes to memory; y goes to
// out, and the DFFM gate is applied to it in place in a second pass (the global mean needs all of y first), with
// the EIMN block's tail (residual, layer scale, the LayerNorm after the block) where tail says so.
// bf16: W_in and W_out in bfloat16 with float32 sums (cpu_gemm_bf16.h; x packed straight into bfloat16 pairs);
// the depthwise convolution, the gate and the DFFM (its small W_lr GEMM included) stay float32.
template <typename T>
void sadffm_infer_kernel(const T* x, const T* w_in, const T* b_in, const T* w_dw, const T* b_dw, const DffmW<T>& w,
                         T* out, int64_t N, int C, int64_t H, int64_t W, int K, bool bf16 = false,
                         const BlockTail<T>* tail = nullptr) {
  const int hid = w.hid, pad = K / 2, Co = w.C, R = w.R;
  const int64_t HW = H * W;
  // Bands of ~6144 pixels: the 1x1 recompute on the K/2-row halos stays ~10%.
  const int64_t band = band_rows(N, H, W, 6144);
  const int64_t nbands = (H + band - 1) / band, items = N * nbands;
  const int64_t tpb = (band * W + kPT - 1) / kPT;  // LayerNorm-sum slots per band (the last band may use fewer)
  const int ngroups = (hid + kGroup - 1) / kGroup;
  const PairGroupWeights<T> pw(w_in, b_in, C, hid);
  const bf16::Weights win_b = bf16 ? bf16_pair_group_weights<T>(w_in, C, hid) : bf16::Weights();
  const bf16::Weights wout_b = bf16 ? bf16_weights<T>(w.w_out, Co, hid) : bf16::Weights();
  Scratch<T> aloc(size_t(N) * HW);
  std::vector<T> ysum(size_t(items) * tpb * Co, T(0));
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    const int64_t maxPu = std::min(H, band + 2 * pad) * W;
    Scratch<T> xpack(bf16 ? 0 : panel_image_numel<T>(C, maxPu)), acc(2 * size_t(band) * W);  // written before read
    std::vector<uint32_t> xpairs(bf16 ? size_t((maxPu + bf16::kNR - 1) / bf16::kNR) * bf16::kNR * win_b.KP : 0);
    GuardedBuf<T> ubuf(size_t(2 * kGroup) * maxPu), zeros(W);
    // hpack: lanes past the band's last pixel are never read into a stored column (GEMM columns are independent);
    // they are cleared per band all the same (clear_panel_tail: subnormal garbage slows the GEMM).
    Scratch<T> hpack(panel_image_numel<T>(hid, band * W));
    std::vector<T> buf(size_t(Co + R + 2) * kPT);
    T *z = buf.data(), *lpre = z + Co * kPT, *mu = lpre + R * kPT, *rs = mu + kPT;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nbands, r0 = (it % nbands) * band, r1 = std::min(H, r0 + band);
      const int64_t ua = std::max<int64_t>(0, r0 - pad), ub = std::min(H, r1 + pad);
      const int64_t Pu = (ub - ua) * W, Pb = (r1 - r0) * W;
      if (bf16) bf16_pack_pairs<T>(C, Pu, x + n * C * HW + ua * W, HW, xpairs.data());
      else pack_b<T>(C, Pu, x + n * C * HW + ua * W, HW, xpack.data());
      clear_panel_tail(hpack.data(), hid, Pb);
      for (int g = 0; g < ngroups; ++g) {
        const int c0 = g * kGroup, gs = std::min(kGroup, hid - c0);
        if (bf16)
          bf16_gemm_pairs<T>(2 * c0, 2 * c0 + 2 * gs, win_b, Pu, xpairs.data(), ubuf.data(), Pu, pw.b.data() + 2 * c0);
        else
          gemm_blk_packed<T>(2 * gs, C, Pu, pw.w.data() + int64_t(2 * c0) * C, xpack.data(), ubuf.data(), Pu,
                            pw.b.data() + 2 * c0, false);
        for (int j = 0; j < gs; ++j) {
          const int c = c0 + j;
          const T* u1 = ubuf.data() + int64_t(j) * Pu;
          const T* u2 = ubuf.data() + int64_t(gs + j) * Pu;
          T* a1 = acc.data();
          T* a2 = acc.data() + Pb;
          dw_rows(u1, ua, ub, r0, r1, W, K, w_dw + int64_t(c) * K * K, b_dw[c], a1, zeros.data());
          dw_rows(u2, ua, ub, r0, r1, W, K, w_dw + int64_t(hid + c) * K * K, b_dw[hid + c], a2, zeros.data());
          // plain stores: hpack (hid x band pixels, ~4 MB at most) is read back at once by the GEMM below; streamed
          // past the caches it came back from memory (1x64x180x320: 3.5% slower, 4x64x64x64: 4.5%)
          gate_to_panels<false>(a1, a2, Pb, 0, c, hid, hpack.data());
        }
      }
      T* y = out + n * Co * HW + r0 * W;
      if (bf16) bf16_gemm_panels<T>(0, Co, wout_b, Pb, hpack.data(), y, HW, w.b_out);
      else gemm_blk_packed<T>(Co, hid, Pb, w.w_out_k.data(), hpack.data(), y, HW, w.b_out, false);
      for (int64_t s = 0; s * kPT < Pb; ++s)
        dffm_tile_stats(w, y + s * kPT, HW, std::min(kPT, Pb - s * kPT), mu, rs, z, lpre,
                        aloc.data() + n * HW + r0 * W + s * kPT, ysum.data() + (it * tpb + s) * Co);
    }
  });
  dffm_apply_gate(w, ysum.data(), nbands * tpb, aloc.data(), HW, out, int64_t(Co) * HW, out, N, HW, tail);
}

// The layer's two kernels back to back with h in the packed panel layout at hp (N * panel_image_numel(hid, H*W)
// elements, 64-byte aligned for the streaming stores): the front scatters h there, the DFFM forward's GEMM reads it
// in place. ustash / dstash: the two halves' stashes (sadffm_forward_stash), or nullptr. The lanes past the last
// pixel of each image's last panel are never read into a result; they are zeroed so that hp is fully defined (and
// free of subnormal garbage: clear_panel_tail).
template <typename T>
void sadffm_panels_fwd(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                       const at::Tensor& b_dw, const DffmW<T>& dw, T* hp, T* out, T* ustash, T* dstash,
                       const BlockTail<T>* tail = nullptr) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, hid = dw.hid;
  for (int64_t n = 0; n < N; ++n) clear_panel_tail(hp + n * panel_image_numel<T>(hid, HW), hid, HW);
  gated_dwconv_fwd_kernel<T>(x.data_ptr<T>(), w_in.data_ptr<T>(), b_in.data_ptr<T>(), w_dw.data_ptr<T>(),
                             b_dw.data_ptr<T>(), hp, N, int(C), int(hid), H, W, int(w_dw.size(-1)), ustash, true);
  dffm_fwd_kernel<T>(dw, hp, out, N, HW, dstash, true, tail);
}

// ----------------------------------------------------------------------------- whole layer, training
// sadffm_forward_stash: the whole SADFFM layer keeping what its backward needs, in one flat stash
// [h in the packed panel layout (first, so its panels are 64-byte aligned for the streaming stores) |
// gated_dwconv stash (U between guards) | dffm_out stash]. h never exists as (N, hid, H, W): the front writes it as
// GEMM panels that the DFFM forward's GEMM and the backward's dW_out read in place. Same values as the two ops,
// bit for bit. SadffmStash: the three parts' sizes in elements (h's depends on the dtype's panel width).
struct SadffmStash {
  int64_t h, gated, dffm;
  int64_t numel() const { return h + gated + dffm; }
};
SadffmStash sadffm_stash(at::ScalarType st, int64_t N, int64_t hid, int64_t C, int64_t R, int64_t HW) {
  SadffmStash s{0, gated_stash_numel(N, hid, HW), dffm_stash_numel(N, C, R, HW)};
  AT_DISPATCH_FLOATING_TYPES(st, "sadffm_stash", [&] { s.h = N * panel_image_numel<scalar_t>(hid, HW); });
  return s;
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
