// SADFFM CPU kernels, gated front (gated_dwconv): h = GELU(t[:hid]) * t[hid:], t = DW_K(W_in x + b_in), forward and
// banded backward. Channel pairs (t1, t2) run in groups of kGroup through one GEMM on a packed band of x; U = W_in x
// + b_in stays in L2 (or, for training, is kept in the stash); the depthwise rows come from sadffm_dwconv.h.
// Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_gemm.h"
#include "cpu/cpu_gemm_bf16.h"
#include "cpu/cpu_reduce.h"
#include "cpu/sadffm_common.h"
#include "cpu/sadffm_dwconv.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

constexpr int kGroup = 6;  // channel pairs per tile (2*kGroup rows = two 6-row GEMM micro-tiles)

// W_in (2h x C) and b_in with the rows reordered per group of kGroup channel pairs: rows [x1 channels of
// group g, x2 channels of group g] are adjacent, so one GEMM gives both halves of a group. Each group's block of
// W_in (2*gs rows, from element 2*c0*C on) is packed by pack_a_blocks for gemm_blk_packed.
template <typename T> struct PairGroupWeights {
  std::vector<T> w, b;
  PairGroupWeights(const T* w_in, const T* b_in, int C, int hid) : w(size_t(2) * hid * C), b(size_t(2) * hid) {
    std::vector<T> rows(size_t(2) * kGroup * C);
    for (int c0 = 0; c0 < hid; c0 += kGroup) {
      const int gs = std::min(kGroup, hid - c0);
      for (int j = 0; j < gs; ++j)
        for (int s = 0; s < 2; ++s) {
          const int row = s * gs + j, src = s * hid + c0 + j;
          std::copy(w_in + int64_t(src) * C, w_in + int64_t(src + 1) * C, rows.data() + int64_t(row) * C);
          b[2 * c0 + row] = b_in[src];
        }
      const std::vector<T> blk = pack_a_blocks<T>(rows.data(), 2 * gs, C, C, 1);
      std::copy(blk.begin(), blk.end(), w.data() + int64_t(2 * c0) * C);
    }
  }
};

// W_in in PairGroupWeights' row order as bfloat16 pairs (cpu_gemm_bf16.h), for the bf16 inference GEMMs: group g's
// rows from row 2 * c0 on, blocked per group of 2 * kGroup rows (the range each GEMM call runs).
template <typename T> bf16::Weights bf16_pair_group_weights(const T* w_in, int C, int hid) {
  std::vector<T> rows(size_t(2) * hid * C);
  for (int c0 = 0; c0 < hid; c0 += kGroup) {
    const int gs = std::min(kGroup, hid - c0);
    for (int j = 0; j < gs; ++j)
      for (int s = 0; s < 2; ++s)
        std::copy(w_in + int64_t(s * hid + c0 + j) * C, w_in + int64_t(s * hid + c0 + j + 1) * C,
                  rows.data() + int64_t(2 * c0 + s * gs + j) * C);
  }
  return bf16_weights<T>(rows.data(), 2 * hid, C, 2 * kGroup);
}

// The gated_dwconv forward's stash for its backward (gated_dwconv_forward_stash): U = W_in x + b_in, all 2*hid
// channels in linear_in's order, (N, 2*hid, H, W) contiguous after kRowGuard zeros and followed by kRowGuard zeros
// (dw_rows reads it in place).
inline int64_t gated_stash_numel(int64_t N, int64_t hid, int64_t HW) { return N * 2 * hid * HW + 2 * kRowGuard; }

// Forward. ustash: the stash's first element of U (past its leading guard), or nullptr. h_panels: h is written in
// the packed panel layout of pack_b, per image panel_image_numel(hid, H*W) elements (for dffm_fwd_kernel's GEMM to
// read in place), instead of (N, hid, H, W); lanes past H*W of the last panel are left as they are.
template <typename T>
void gated_dwconv_fwd_kernel(const T* x, const T* w_in, const T* b_in, const T* w_dw, const T* b_dw, T* h,
                             int64_t N, int C, int hid, int64_t H, int64_t W, int K, T* ustash,
                             bool h_panels = false) {
  const int pad = K / 2;
  const int64_t HW = H * W;
  const int ngroups = (hid + kGroup - 1) / kGroup;
  // Row band: the 1x1 output of 2*kGroup channels over band + halo rows stays in L2.
  const int64_t band = std::min<int64_t>(H, std::max<int64_t>(1, 6400 / W - 2 * pad));
  const int64_t nbands = (H + band - 1) / band;
  const int64_t items = N * nbands * ngroups;
  const PairGroupWeights<T> pw(w_in, b_in, C, hid);
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    const int64_t maxP = (band + 2 * pad) * W;
    GuardedBuf<T> tbuf(size_t(2 * kGroup) * maxP), zeros(W);
    Scratch<T> xpack(panel_image_numel<T>(C, maxP)), acc(2 * size_t(band) * W);  // written before read
    int64_t packed = -1;  // (n, band) index whose x band is in xpack
    for (int64_t it = i0; it < i1; ++it) {
      const int g = int(it % ngroups);
      const int64_t nbi = it / ngroups, nb = nbi % nbands, n = nbi / nbands;
      const int c0 = g * kGroup, gs = std::min(kGroup, hid - c0);
      const int64_t r0 = nb * band, r1 = std::min(H, r0 + band);
      const int64_t a = std::max<int64_t>(0, r0 - pad), b = std::min(H, r1 + pad);
      const int64_t P = (b - a) * W;
      if (packed != nbi) {
        pack_b<T>(C, P, x + n * C * HW + a * W, HW, xpack.data());
        packed = nbi;
      }
      T* t1 = tbuf.data();
      T* t2 = tbuf.data() + gs * P;
      gemm_blk_packed<T>(2 * gs, C, P, pw.w.data() + int64_t(2 * c0) * C, xpack.data(), t1, P, pw.b.data() + 2 * c0,
                        false);
      const int64_t Pb = (r1 - r0) * W;
      T* a1 = acc.data();
      T* a2 = acc.data() + Pb;
      for (int j = 0; j < gs; ++j) {
        const int c = c0 + j;
        if (ustash) {  // this band's rows of U (not the halo rows: those belong to the neighbouring bands)
          const T* u1 = t1 + j * P + (r0 - a) * W;
          const T* u2 = t2 + j * P + (r0 - a) * W;
          copy_streaming(u1, Pb, ustash + (n * 2 * hid + c) * HW + r0 * W);
          copy_streaming(u2, Pb, ustash + (n * 2 * hid + hid + c) * HW + r0 * W);
        }
        dw_rows(t1 + j * P, a, b, r0, r1, W, K, w_dw + int64_t(c) * K * K, b_dw[c], a1, zeros.data());
        dw_rows(t2 + j * P, a, b, r0, r1, W, K, w_dw + int64_t(hid + c) * K * K, b_dw[hid + c], a2, zeros.data());
        if (h_panels) {
          gate_to_panels<true>(a1, a2, Pb, r0 * W, c, hid, h + n * panel_image_numel<T>(hid, HW));
          continue;
        }
        T* out = h + (n * hid + c) * HW + r0 * W;
#pragma omp simd
        for (int64_t p = 0; p < Pb; ++p) out[p] = v_gelu(a1[p]) * a2[p];
      }
    }
    if (ustash || h_panels) stream_fence();
  });
}

// ----------------------------------------------------------------------------- gated_dwconv backward
// Fused, banded backward: one work item is (image n, row band [r0, r1)); nothing of size N x 2h x H x W is
// materialised. Per item, for each group of kGroup channel pairs:
//   U    = W_in x + b_in on rows [r0-2p, r1+2p)      (GEMM on the packed x band, stays in L2)
//   t    = DW(U), dt = dh/dt on rows [r0-p, r1+p)    (GELU(t1) * t2 derivative, as DW(U2) is produced)
//   dW_dw, db_dw partials over rows [r0, r1)        (per item, summed in item order)
//   dU   = DW^T(dt) on rows [r0, r1)                 (into the band buffer dUb: 2h x band pixels, stored as
//                                                     the packed GEMM panels, so neither GEMM below repacks it;
//                                                     written there by the depthwise conv itself)
// then dx[band] = W_in^T dUb, and dW_in, db_in partials (per fixed chunk of items) += dUb x[band]^T, sum dUb.
// U is recomputed over a 2p-row halo on each side; the band height trades that halo against the size of dUb.
// With the forward's stash (ustash: its first element of U, else nullptr) U is read from it instead.
template <typename T>
void gated_dwconv_bwd_kernel(const T* gh, const T* x, const T* w_in, const T* b_in, const T* w_dw, const T* b_dw,
                             T* gx, T* gw_in, T* gb_in, T* gw_dw, T* gb_dw, int64_t N, int C, int hid, int64_t H,
                             int64_t W, int K, const T* ustash) {
  const int C2 = 2 * hid, KK = K * K, pad = K / 2;
  const int64_t HW = H * W;
  const int64_t band = band_rows(N, H, W, 4096);
  const int64_t nbands = (H + band - 1) / band, items = N * nbands;
  const int ngroups = (hid + kGroup - 1) / kGroup;
  const PairGroupWeights<T> pw(w_in, b_in, C, hid);
  std::vector<T> wflip(size_t(C2) * KK);
  for (int c = 0; c < C2; ++c)
    for (int k = 0; k < KK; ++k) wflip[c * KK + k] = w_dw[c * KK + (KK - 1 - k)];
  const std::vector<T> w_inT = pack_a_blocks<T>(w_in, C, C2, 1, C);  // W_in^T (C x C2), for dx = W_in^T dU
  std::vector<T> gwdw_part(size_t(items) * C2 * KK), gbdw_part(size_t(items) * C2);
  const Chunks ch(items, 32);
  std::vector<T> gw_part(size_t(ch.n) * C2 * C, T(0)), gb_part(size_t(ch.n) * C2, T(0));
  at::parallel_for(0, ch.n, 1, [&](int64_t k0, int64_t k1) {
    const int64_t maxPu = std::min(H, band + 4 * pad) * W, maxPt = std::min(H, band + 2 * pad) * W;
    Scratch<T> xpack(ustash ? 0 : panel_image_numel<T>(C, maxPu));  // pack_b writes every element
    GuardedBuf<T> ubuf(ustash ? 0 : size_t(2 * kGroup) * maxPu), dt(2 * size_t(maxPt)), zeros(W);
    // dub: every panel lane of the band's pixels is written before the GEMMs read it; lanes past the band's last
    // pixel are never read into a stored column (the dx GEMM) or into the pixel reduction (gemm_nt), but they are
    // cleared per band (clear_panel_tail: subnormal garbage slows the dx GEMM).
    Scratch<T> dub(panel_image_numel<T>(C2, band * W));
    std::vector<T> duband(size_t(band) * W);
    std::vector<T> colacc(dw_wgrad_colacc_size(K, W));
    for (int64_t k = k0; k < k1; ++k) {
      T* gwp = gw_part.data() + k * C2 * C;
      T* gbp = gb_part.data() + k * C2;
      for (int64_t it = ch.begin(k); it < ch.end(k); ++it) {
        const int64_t n = it / nbands, r0 = (it % nbands) * band, r1 = std::min(H, r0 + band);
        const int64_t ua = std::max<int64_t>(0, r0 - 2 * pad), ub = std::min(H, r1 + 2 * pad);
        const int64_t ta = std::max<int64_t>(0, r0 - pad), tb = std::min(H, r1 + pad);
        const int64_t Pu = (ub - ua) * W, Pt = (tb - ta) * W, Pb = (r1 - r0) * W;
        const T* xn = x + n * C * HW;
        if (!ustash) pack_b<T>(C, Pu, xn + ua * W, HW, xpack.data());
        clear_panel_tail(dub.data(), C2, Pb);
        for (int g = 0; g < ngroups; ++g) {
          const int c0 = g * kGroup, gs = std::min(kGroup, hid - c0);
          if (!ustash)
            gemm_blk_packed<T>(2 * gs, C, Pu, pw.w.data() + int64_t(2 * c0) * C, xpack.data(), ubuf.data(), Pu,
                              pw.b.data() + 2 * c0, false);
          for (int j = 0; j < gs; ++j) {
            const int c1 = c0 + j, c2 = hid + c0 + j;
            // Rows [ua, ub) of U's channels c1 and c2.
            const T* u1 = ustash ? ustash + (n * C2 + c1) * HW + ua * W : ubuf.data() + int64_t(j) * Pu;
            const T* u2 = ustash ? ustash + (n * C2 + c2) * HW + ua * W : ubuf.data() + int64_t(gs + j) * Pu;
            T* d1 = dt.data();
            T* d2 = dt.data() + maxPt;
            // the next pair's rows of U and grad_h into L2 while this pair's depthwise convs run
            LinePrefetcher next;
            const bool prefetch_next = ustash && c1 + 1 < hid;
            if (prefetch_next) {
              next.add(ustash + (n * C2 + c1 + 1) * HW + ua * W, Pu * int64_t(sizeof(T)));
              next.add(ustash + (n * C2 + c2 + 1) * HW + ua * W, Pu * int64_t(sizeof(T)));
              next.add(gh + (n * hid + c1 + 1) * HW + ta * W, Pt * int64_t(sizeof(T)));
            }
            dw_gate_grad(u1, u2, ua, ub, ta, tb, W, K, w_dw + int64_t(c1) * KK, b_dw[c1], w_dw + int64_t(c2) * KK,
                         b_dw[c2], gh + (n * hid + c1) * HW + ta * W, d1, d2, zeros.data(),
                         prefetch_next ? &next : nullptr);
            for (int s = 0; s < 2; ++s) {
              const int c = s ? c2 : c1;
              const T* u = s ? u2 : u1;
              const T* d = s ? d2 : d1;
              const T* dband = d + (r0 - ta) * W;
              dw_wgrad<T>(dband, u, ua, ub, r0, r1, W, K, zeros.data(), gwdw_part.data() + (it * C2 + c) * KK,
                          gbdw_part.data() + it * C2 + c, colacc.data());
              // dU on the band, into the packed panels of dub; its sum is db_in's share of this band.
              gbp[c] += dw_rows_to_panels(d, ta, tb, r0, r1, W, K, wflip.data() + int64_t(c) * KK, T(0),
                                           zeros.data(), duband.data(), c, C2, dub.data());
            }
          }
        }
        gemm_blk_packed<T>(C, C2, Pb, w_inT.data(), dub.data(), gx + n * C * HW + r0 * W, HW, nullptr, false);
        gemm_nt_apacked<T>(C2, C, Pb, dub.data(), xn + r0 * W, HW, gwp, C);
      }
    }
  });
  sum_rows<T>(gwdw_part.data(), items, int64_t(C2) * KK, int64_t(C2) * KK, gw_dw);
  sum_rows<T>(gbdw_part.data(), items, C2, C2, gb_dw);
  sum_rows<T>(gw_part.data(), ch.n, int64_t(C2) * C, int64_t(C2) * C, gw_in);
  sum_rows<T>(gb_part.data(), ch.n, C2, C2, gb_in);
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
