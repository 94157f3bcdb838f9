// SADFFM CPU kernels, DFFM forward (dffm_out): y = W_out h + b_out per 256-pixel tile with its channel LayerNorm
// statistics, the local branch and the per-tile sums for the global mean; then a second pass applies the gate
// y * c * s once the image-wide mean is known. The stash layout the backward reads (DffmStash) is defined here.
// Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/eimn_math.h"
#include "cpu/channel_norm.h"
#include "cpu/cpu_gemm.h"
#include "cpu/sadffm_common.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

constexpr int64_t kPT = 256;  // pixels per dffm tile

template <typename T> struct DffmW {
  const T *w_out, *b_out, *ln_w, *ln_b, *w_gr, *b_gr, *w_lr, *b_lr, *w_ce, *b_ce, *w_se, *b_se;
  int C, hid, R;
  T eps;
  std::vector<T> w_out_k, w_lr_k;  // W_out (C x hid) and W_lr (R x C) packed by pack_a_blocks, for gemm_blk(_packed)
};

// One tile of y = W_out h + b_out (written to y, ld HW), its LayerNorm stats, z (tile buffer [C][kPT]),
// lpre = W_lr z + b_lr ([R][kPT]), a_loc = w_se[:R] . GELU(lpre), per-channel sums of yhat = (y - mu) * rstd.
// dffm_tile_stats: everything after the GEMM, for a y tile already computed (ld HW).
template <typename T>
void dffm_tile_stats(const DffmW<T>& w, const T* y, int64_t HW, int64_t P, T* mu, T* rstd, T* z, T* lpre, T* aloc,
                     T* yhat_sum) {
  const int C = w.C, R = w.R;
  channel_stats(y, HW, C, P, w.eps, mu, rstd);
  for (int c = 0; c < C; ++c) {
    const T* yc = y + c * HW;
    T* zc = z + c * kPT;
    const T lw = w.ln_w[c], lb = w.ln_b[c];
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t p = 0; p < P; ++p) {
      const T yh = (yc[p] - mu[p]) * rstd[p];
      s += yh;
      zc[p] = yh * lw + lb;
    }
    yhat_sum[c] = s;
  }
  gemm_blk<T>(R, C, P, w.w_lr_k.data(), z, kPT, lpre, kPT, w.b_lr, false);
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) aloc[p] = 0;
  for (int r = 0; r < R; ++r) {
    const T ws = w.w_se[r];
    const T* lr = lpre + r * kPT;
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) aloc[p] += ws * v_gelu(lr[p]);
  }
}

// h: the tile of (N, hid, H, W) h, packed into hpack here; or, with h_panels, the tile's panels (read in place).
template <typename T>
void dffm_tile_front(const DffmW<T>& w, const T* h, int64_t HW, int64_t P, T* y, T* mu, T* rstd, T* z, T* lpre,
                     T* aloc, T* yhat_sum, T* hpack, bool h_panels = false) {
  if (h_panels) hpack = const_cast<T*>(h);
  else pack_b<T>(w.hid, P, h, HW, hpack);  // the whole tile at once: row-sequential reads of h
  gemm_blk_packed<T>(w.C, w.hid, P, w.w_out_k.data(), hpack, y, HW, w.b_out, false);
  dffm_tile_stats(w, y, HW, P, mu, rstd, z, lpre, aloc, yhat_sum);
}

// Image-wide sum of channel c of the per-tile sums [ntiles][C], in tile order. The forward's stash, the backward's
// recompute and dffm_global all sum through here, so a stashed sum equals the recomputed one bit for bit.
template <typename T> inline T sum_tiles(const T* tiles, int64_t ntiles, int C, int c) {
  T s = 0;
  for (int64_t t = 0; t < ntiles; ++t) s += tiles[t * C + c];
  return s;
}

// Per image: m = mean_HW z, gpre = W_gr m + b_gr, g = GELU(gpre), cc = sigmoid(W_ce g + b_ce),
// k = w_se[R:] . g + b_se.  (exact scalar math; N*C work)
template <typename T>
void dffm_global(const DffmW<T>& w, const T* yhat_sum_tiles, int64_t ntiles, int64_t HW, T* m, T* gpre, T* g, T* cc,
                 T* k) {
  const int C = w.C, R = w.R;
  for (int c = 0; c < C; ++c) m[c] = w.ln_w[c] * (sum_tiles(yhat_sum_tiles, ntiles, C, c) / T(HW)) + w.ln_b[c];
  T kk = w.b_se[0];
  for (int r = 0; r < R; ++r) {
    T s = w.b_gr[r];
    for (int c = 0; c < C; ++c) s += w.w_gr[r * C + c] * m[c];
    gpre[r] = s;
    g[r] = gelu(s);
    kk += w.w_se[R + r] * g[r];
  }
  *k = kk;
  for (int c = 0; c < C; ++c) {
    T s = w.b_ce[c];
    for (int r = 0; r < R; ++r) s += w.w_ce[c * R + r] * g[r];
    cc[c] = sigmoid(s);
  }
}

// The forward's intermediates kept for the backward (dffm_out_forward_stash), in one flat buffer: per image the
// planes [y (C) | lpre (R) | mu | rstd | a_loc] (HW each), then per image the C sums of yhat = (y - mu) * rstd over
// the image, summed over the tiles in tile order as the backward's own recompute of them would.
inline int64_t dffm_stash_numel(int64_t N, int64_t C, int64_t R, int64_t HW) { return N * ((C + R + 3) * HW + C); }
template <typename T> struct DffmStash {
  T* base;
  int64_t N, HW;
  int C, R;
  DffmStash(T* base_, int64_t N_, int C_, int R_, int64_t HW_) : base(base_), N(N_), HW(HW_), C(C_), R(R_) {}
  int64_t stride() const { return (int64_t(C) + R + 3) * HW; }  // elements per image of the planes
  T* y(int64_t n) const { return base + n * stride(); }
  T* lpre(int64_t n) const { return y(n) + int64_t(C) * HW; }
  T* mu(int64_t n) const { return y(n) + int64_t(C + R) * HW; }
  T* rstd(int64_t n) const { return y(n) + int64_t(C + R + 1) * HW; }
  T* aloc(int64_t n) const { return y(n) + int64_t(C + R + 2) * HW; }
  T* ysum(int64_t n) const { return base + N * stride() + n * C; }
};

// The EIMN block's tail after its SADFFM, fused into the gate pass (inference): out = a + ls[ch] * gated, then,
// with ln_w, EIMN's channel LayerNorm between blocks over it: (t - mean_c t) * rstd * ln_w[ch] + ln_b[ch]. a is the
// SADFFM's input (N, C, HW); it may not alias out.
template <typename T> struct BlockTail {
  const T *a = nullptr, *ls = nullptr, *ln_w = nullptr, *ln_b = nullptr;
  T ln_eps = T(1e-5);
};

// Second pass of the DFFM forward: per image, the global branch from the per-tile sums of yhat (ntiles slots
// per image, in order), then out = y * c[n, ch] * sigmoid(aloc + k[n]) (y may be out itself: in place), or with
// a block tail (tail->a set) the tail of that. y and aloc of image n start at y + n * y_stride,
// aloc + n * aloc_stride; out is (N, C, HW).
template <typename T>
void dffm_apply_gate(const DffmW<T>& w, const T* ysum, int64_t ntiles, const T* aloc, int64_t aloc_stride,
                     const T* y, int64_t y_stride, T* out, int64_t N, int64_t HW, const BlockTail<T>* tail = nullptr) {
  const int C = w.C, R = w.R;
  std::vector<T> cc(size_t(N) * C), kn(N), tmp(size_t(C) + 2 * R);
  for (int64_t n = 0; n < N; ++n)
    dffm_global(w, ysum + n * ntiles * C, ntiles, HW, tmp.data(), tmp.data() + C, tmp.data() + C + R,
                cc.data() + n * C, kn.data() + n);
  const bool res = tail && tail->a, norm = res && tail->ln_w;
  const int64_t nt = (HW + kPT - 1) / kPT;
  at::parallel_for(0, N * nt, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> s(kPT), tb(norm ? size_t(C) * kPT + 2 * kPT : 0);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kPT, P = std::min(kPT, HW - p0);
      const T* al = aloc + n * aloc_stride + p0;
      const T k = kn[n];
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) s[p] = v_sigmoid(al[p] + k);
      for (int c = 0; c < C; ++c) {
        const T* yc = y + n * y_stride + c * HW + p0;
        T* o = out + (n * C + c) * HW + p0;
        const T cv = cc[n * C + c];
        if (!res) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) o[p] = yc[p] * (cv * s[p]);
          continue;
        }
        const T* ac = tail->a + (n * C + c) * HW + p0;
        T* t = norm ? tb.data() + c * kPT : o;
        const T lc = tail->ls[c];
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) t[p] = ac[p] + lc * (yc[p] * (cv * s[p]));
      }
      if (!norm) continue;
      T *mu = tb.data() + size_t(C) * kPT, *rs = mu + kPT;
      channel_stats(tb.data(), kPT, C, P, tail->ln_eps, mu, rs);
      channel_norm_apply(tb.data(), kPT, C, P, mu, rs, tail->ln_w, tail->ln_b, out + n * C * HW + p0, HW);
    }
  });
}

// DFFM forward. With a stash (DffmStash layout, else nullptr) y and the per-pixel statistics go there for the
// backward, and out is written once by the gate pass; without, y is written to out and gated in place.
// h_panels: h is in the panel layout of gated_dwconv_fwd_kernel's h_panels output.
template <typename T>
void dffm_fwd_kernel(const DffmW<T>& w, const T* h, T* out, int64_t N, int64_t HW, T* stash, bool h_panels = false,
                     const BlockTail<T>* tail = nullptr) {
  const int C = w.C, R = w.R;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  const DffmStash<T> st(stash, N, C, R, HW);
  Scratch<T> aloc_own(stash ? 0 : size_t(N) * HW);
  std::vector<T> ysum(size_t(items) * C);
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> buf(size_t(C + R + 2) * kPT), hpack(h_panels ? 0 : size_t(w.hid) * kPT);
    T *z = buf.data(), *lpre = z + C * kPT, *mu = lpre + R * kPT, *rs = mu + kPT;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kPT, P = std::min(kPT, HW - p0);
      // y, mu, rstd, a_loc: into the stash, or y into out and the statistics into tile buffers
      T* y = stash ? st.y(n) + p0 : out + n * C * HW + p0;
      T* m = stash ? st.mu(n) + p0 : mu;
      T* rd = stash ? st.rstd(n) + p0 : rs;
      T* al = stash ? st.aloc(n) + p0 : aloc_own.data() + n * HW + p0;
      static_assert(kPT % panel_width<T>() == 0, "dffm tiles must start on a panel");
      dffm_tile_front(w, image_tile(h, h_panels, n, p0, w.hid, HW), HW, P, y, m, rd, z, lpre, al, ysum.data() + it * C, hpack.data(), h_panels);
      if (stash)
        for (int r = 0; r < R; ++r) std::copy(lpre + r * kPT, lpre + r * kPT + P, st.lpre(n) + r * HW + p0);
    }
  });
  if (!stash) return dffm_apply_gate(w, ysum.data(), nt, aloc_own.data(), HW, out, int64_t(C) * HW, out, N, HW, tail);
  for (int64_t n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) st.ysum(n)[c] = sum_tiles(ysum.data() + n * nt * C, nt, C, c);
  dffm_apply_gate(w, ysum.data(), nt, st.aloc(0), st.stride(), st.y(0), st.stride(), out, N, HW);
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
