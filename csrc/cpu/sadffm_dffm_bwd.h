// SADFFM CPU kernels, DFFM backward (dffm_out): the gradients of h and of the 12 DFFM weights, in passes over
// 256-pixel tiles (below). Weight gradients are summed per tile or chunk, then in a fixed order.
// Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/eimn_math.h"
#include "cpu/cpu_gemm.h"
#include "cpu/cpu_reduce.h"
#include "cpu/sadffm_dffm.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

// The DFFM backward (dffm_bwd_kernel) in passes over 256-pixel tiles:
//   A (front)   recompute y, its LayerNorm statistics, lpre and a_loc (skipped with the forward's stash);
//   B (local)   per tile: the local part of dy and the partial sums of the small weights' gradients;
//   globals     per image: the global branch's gradients from B's partials, in fixed order;
//   C (out)     dy = local part + the LayerNorm backward of the per-image term; dh = W_out^T dy, dW_out, db_out.

// Per-pixel intermediates, per image n: y (C planes), lpre (R), mu, rstd, a_loc (the forward front) and the local
// part of dy (C). With the forward's stash (DffmStash) the front is read from it (pass A is skipped) and dy_local
// lives in gh's memory. Without, pass A recomputes the front into planes [y | dy_local | lpre | mu | rstd |
// a_loc], in gh's own memory when it has room (hid >= 2C + R + 3, as in EIMN: 170 >= 147), else in a scratch
// buffer. Every pass touches only its tile's pixels, and pass C reads a tile's planes before it writes that tile
// of gh.
template <typename T> struct DffmBwdPlanes {
  bool borrow;
  Scratch<T> own;
  T* base;          // dy_local (and, without a stash, the front)
  T* fbase;         // the front: the stash's planes, or base
  int64_t ld, fld;  // planes per image in base / in fbase
  int64_t oLP, oDY, HW;
  int R;
  DffmBwdPlanes(const DffmW<T>& w, const T* stash, T* gh, int64_t N, int64_t HW_)
      : borrow(stash ? w.hid >= w.C : w.hid >= 2 * int64_t(w.C) + w.R + 3),
        own(borrow ? 0 : size_t(N) * (stash ? w.C : 2 * int64_t(w.C) + w.R + 3) * HW_),
        base(borrow ? gh : own.data()),
        fbase(stash ? const_cast<T*>(stash) : base),  // written by pass A only, which never runs with a stash
        ld(borrow ? w.hid : (stash ? w.C : 2 * int64_t(w.C) + w.R + 3)),
        fld(stash ? int64_t(w.C) + w.R + 3 : ld),
        oLP(stash ? w.C : 2 * w.C),
        oDY(stash ? 0 : w.C),
        HW(HW_),
        R(w.R) {}
  T* y(int64_t n) const { return fbase + n * fld * HW; }
  T* dy(int64_t n) const { return base + (n * ld + oDY) * HW; }
  T* lpre(int64_t n) const { return y(n) + oLP * HW; }
  T* mu(int64_t n) const { return y(n) + (oLP + R) * HW; }
  T* rstd(int64_t n) const { return y(n) + (oLP + R + 1) * HW; }
  T* aloc(int64_t n) const { return y(n) + (oLP + R + 2) * HW; }
};

// Pass A: recompute the forward front of every tile, keeping y, mu, rstd, lpre, a_loc (planes pl) and the per-tile
// sums of yhat (ysum: nt slots of C per image).
template <typename T>
void dffm_bwd_front(const DffmW<T>& w, const DffmBwdPlanes<T>& pl, const T* h, bool h_panels, int64_t N, int64_t HW,
                    T* ysum) {
  const int C = w.C, R = w.R, hid = w.hid;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> z(size_t(C) * kPT), lpre(size_t(R) * kPT), hpack(size_t(hid) * kPT);
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kPT, P = std::min(kPT, HW - p0);
      dffm_tile_front(w, image_tile(h, h_panels, n, p0, hid, HW), HW, P, pl.y(n) + p0, pl.mu(n) + p0,
                      pl.rstd(n) + p0, z.data(), lpre.data(), pl.aloc(n) + p0, ysum + it * C, hpack.data(),
                      h_panels);
      for (int r = 0; r < R; ++r)
        std::copy(lpre.data() + r * kPT, lpre.data() + r * kPT + P, pl.lpre(n) + r * HW + p0);
    }
  });
}

// The global branch's forward values per image (dffm_global): m (C), gpre, g (R), cc (C), k.
template <typename T> struct DffmGlobals {
  std::vector<T> M, GP, G, CC, KN;
  DffmGlobals(const DffmW<T>& w, const T* ysum, int64_t nsum, int64_t N, int64_t HW)
      : M(size_t(N) * w.C), GP(size_t(N) * w.R), G(size_t(N) * w.R), CC(size_t(N) * w.C), KN(N) {
    const int C = w.C, R = w.R;
    for (int64_t n = 0; n < N; ++n)
      dffm_global(w, ysum + n * nsum * C, nsum, HW, M.data() + n * C, GP.data() + n * R, G.data() + n * R,
                  CC.data() + n * C, KN.data() + n);
  }
};

// Pass B's per-tile partial sums, one row of `size` per tile: [dc C][dln_w C][dln_b C][db_lr R][dw_se[:R] R]
// [dW_lr R*C][sum dsl 1].
struct DffmPartLayout {
  int64_t LNW, LNB, BLR, WSE, WLR, DSL, size;
  DffmPartLayout(int C, int R)
      : LNW(C), LNB(2 * C), BLR(3 * C), WSE(3 * C + R), WLR(3 * C + 2 * R), DSL(3 * C + 2 * R + R * C),
        size(DSL + 1) {}
};

// Pass B: per tile, the partials of lay (dc, sum dsl, dW_lr, db_lr, dw_se[:R], dln_w, dln_b) into part, and the
// local part of dy into pl.dy.
template <typename T>
void dffm_bwd_local(const DffmW<T>& w, const DffmBwdPlanes<T>& pl, const DffmGlobals<T>& gl, const T* go, int64_t N,
                    int64_t HW, const DffmPartLayout& lay, T* part) {
  const int C = w.C, R = w.R;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  const std::vector<T> w_lrT = pack_a_blocks<T>(w.w_lr, C, R, 1, C);  // W_lr^T (C x R), for W_lr^T dl
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> buf(size_t(2 * C + R + 4) * kPT);
    T *yh = buf.data(), *dz = yh + C * kPT, *dl = dz + C * kPT, *s = dl + R * kPT, *dsl = s + kPT, *ma = dsl + kPT,
      *mb = ma + kPT;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kPT, P = std::min(kPT, HW - p0);
      T* pt = part + it * lay.size;
      T *p_dc = pt, *p_lnw = pt + lay.LNW, *p_lnb = pt + lay.LNB, *p_blr = pt + lay.BLR, *p_wse = pt + lay.WSE,
        *p_wlr = pt + lay.WLR, *p_dsl = pt + lay.DSL;
      const T* y = pl.y(n) + p0;
      const T* g = go + n * C * HW + p0;
      const T* mu = pl.mu(n) + p0;
      const T* rs = pl.rstd(n) + p0;
      const T* lp = pl.lpre(n) + p0;
      const T* cc = gl.CC.data() + n * C;
      const T k = gl.KN[n];
      const T* al = pl.aloc(n) + p0;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) { s[p] = v_sigmoid(al[p] + k); dsl[p] = 0; }
      for (int c = 0; c < C; ++c) {
        const T* yc = y + c * HW;
        const T* gc = g + c * HW;
        const T cv = cc[c];
        T sc = 0;
#pragma omp simd reduction(+ : sc)
        for (int64_t p = 0; p < P; ++p) {
          const T gy = gc[p] * yc[p];
          dsl[p] += gy * cv;
          sc += gy * s[p];
        }
        p_dc[c] = sc;
      }
      T ssum = 0;
#pragma omp simd reduction(+ : ssum)
      for (int64_t p = 0; p < P; ++p) { dsl[p] *= s[p] * (T(1) - s[p]); ssum += dsl[p]; }
      *p_dsl = ssum;
      for (int r = 0; r < R; ++r) {
        const T* lr = lp + r * HW;
        T* dlr = dl + r * kPT;
        const T ws = w.w_se[r];
        T sw = 0, sb = 0;
#pragma omp simd reduction(+ : sw, sb)
        for (int64_t p = 0; p < P; ++p) {
          sw += dsl[p] * v_gelu(lr[p]);
          const T d = dsl[p] * ws * v_gelu_grad(lr[p]);
          dlr[p] = d;
          sb += d;
        }
        p_wse[r] = sw;
        p_blr[r] = sb;
      }
      // z tile into dz buffer (temporarily) for dW_lr; yhat kept.
      for (int c = 0; c < C; ++c) {
        const T* yc = y + c * HW;
        T* yhc = yh + c * kPT;
        T* zc = dz + c * kPT;
        const T lw = w.ln_w[c], lb = w.ln_b[c];
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) { yhc[p] = (yc[p] - mu[p]) * rs[p]; zc[p] = yhc[p] * lw + lb; }
      }
      gemm_nt<T>(R, C, P, dl, kPT, dz, kPT, p_wlr, C);
      gemm_blk<T>(C, R, P, w_lrT.data(), dl, kPT, dz, kPT, nullptr, false);
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) { ma[p] = 0; mb[p] = 0; }
      for (int c = 0; c < C; ++c) {
        T* dzc = dz + c * kPT;
        const T* yhc = yh + c * kPT;
        const T lw = w.ln_w[c];
        T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t p = 0; p < P; ++p) {
          s1 += dzc[p] * yhc[p];
          s2 += dzc[p];
          const T d = dzc[p] * lw;
          dzc[p] = d;
          ma[p] += d;
          mb[p] += d * yhc[p];
        }
        p_lnw[c] = s1;
        p_lnb[c] = s2;
      }
      const T invC = T(1) / T(C);
      for (int c = 0; c < C; ++c) {
        const T* dzc = dz + c * kPT;
        const T* yhc = yh + c * kPT;
        const T* gc = g + c * HW;
        const T cv = cc[c];
        T* out = pl.dy(n) + c * HW + p0;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p)
          out[p] = rs[p] * (dzc[p] - ma[p] * invC - yhc[p] * mb[p] * invC) + gc[p] * cv * s[p];
      }
    }
  });
}

// The small weights' gradients (ln_w, ln_b, W_gr, b_gr, W_lr, b_lr, W_ce, b_ce, w_se, b_se) from pass B's
// partials and the per-image globals, in fixed order; U (N x C) and UM (N): the per-image LayerNorm-backward terms
// that pass C adds to every pixel's dy. ysum: nsum slots of C per image (the per-tile or stashed sums of yhat).
template <typename T>
void dffm_bwd_globals(const DffmW<T>& w, const DffmGlobals<T>& gl, const T* part, const DffmPartLayout& lay,
                      const T* ysum, int64_t nsum, int64_t N, int64_t HW, T* gln_w, T* gln_b, T* gw_gr, T* gb_gr,
                      T* gw_lr, T* gb_lr, T* gw_ce, T* gb_ce, T* gw_se, T* gb_se, T* U, T* UM) {
  const int C = w.C, R = w.R;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  const std::vector<T>&M = gl.M, &GP = gl.GP, &G = gl.G, &CC = gl.CC;
  std::fill(gln_w, gln_w + C, T(0));
  std::fill(gln_b, gln_b + C, T(0));
  std::fill(gw_gr, gw_gr + R * C, T(0));
  std::fill(gb_gr, gb_gr + R, T(0));
  std::fill(gw_lr, gw_lr + R * C, T(0));
  std::fill(gb_lr, gb_lr + R, T(0));
  std::fill(gw_ce, gw_ce + C * R, T(0));
  std::fill(gb_ce, gb_ce + C, T(0));
  std::fill(gw_se, gw_se + 2 * R, T(0));
  gb_se[0] = 0;
  std::vector<T> dc(C), dg(R), dm(C), ys(C);
  for (int64_t n = 0; n < N; ++n) {
    std::fill(dc.begin(), dc.end(), T(0));
    T dsls = 0;
    for (int64_t t = 0; t < nt; ++t) {
      const T* pt = part + (n * nt + t) * lay.size;
      for (int c = 0; c < C; ++c) dc[c] += pt[c];
      dsls += pt[lay.DSL];
    }
    for (int c = 0; c < C; ++c) ys[c] = sum_tiles(ysum + n * nsum * C, nsum, C, c);
    const T* g = G.data() + n * R;
    const T* cc = CC.data() + n * C;
    std::fill(dg.begin(), dg.end(), T(0));
    for (int c = 0; c < C; ++c) {
      const T dcl = dc[c] * cc[c] * (T(1) - cc[c]);
      gb_ce[c] += dcl;
      for (int r = 0; r < R; ++r) {
        gw_ce[c * R + r] += dcl * g[r];
        dg[r] += w.w_ce[c * R + r] * dcl;
      }
    }
    gb_se[0] += dsls;
    for (int r = 0; r < R; ++r) {
      dg[r] += w.w_se[R + r] * dsls;
      gw_se[R + r] += dsls * g[r];
    }
    std::fill(dm.begin(), dm.end(), T(0));
    for (int r = 0; r < R; ++r) {
      const T dgp = dg[r] * gelu_grad(GP[n * R + r]);
      gb_gr[r] += dgp;
      for (int c = 0; c < C; ++c) {
        gw_gr[r * C + c] += dgp * M[n * C + c];
        dm[c] += w.w_gr[r * C + c] * dgp;
      }
    }
    T um = 0;
    for (int c = 0; c < C; ++c) {
      const T v = dm[c] / T(HW);
      gln_w[c] += v * ys[c];
      gln_b[c] += dm[c];
      U[n * C + c] = v * w.ln_w[c];
      um += U[n * C + c];
    }
    UM[n] = um / T(C);
  }
  for (int64_t it = 0; it < items; ++it) {
    const T* pt = part + it * lay.size;
    for (int c = 0; c < C; ++c) { gln_w[c] += pt[lay.LNW + c]; gln_b[c] += pt[lay.LNB + c]; }
    for (int r = 0; r < R; ++r) { gb_lr[r] += pt[lay.BLR + r]; gw_se[r] += pt[lay.WSE + r]; }
    for (int e = 0; e < R * C; ++e) gw_lr[e] += pt[lay.WLR + e];
  }
}

// Pass C: dy = pl.dy + the LayerNorm backward of the per-image term (U, UM); dh = W_out^T dy into gh; dW_out
// (per chunk, transposed: hid x C) and db_out, summed in chunk order.
template <typename T>
void dffm_bwd_out(const DffmW<T>& w, const DffmBwdPlanes<T>& pl, const T* U, const T* UM, const T* h, bool h_panels,
                  int64_t N, int64_t HW, T* gh, T* gw_out, T* gb_out) {
  const int C = w.C, hid = w.hid;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  const std::vector<T> w_outT = pack_a_blocks<T>(w.w_out, hid, C, 1, hid);  // W_out^T (hid x C)
  const Chunks ch(items, 32);
  std::vector<T> wpart(size_t(ch.n) * (C * hid + C), T(0));
  at::parallel_for(0, ch.n, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> buf(size_t(C + 1) * kPT);
    T *dy = buf.data(), *bb = dy + C * kPT;
    for (int64_t k = k0; k < k1; ++k) {
      T* gwp = wpart.data() + k * (C * hid + C);
      T* gbp = gwp + C * hid;
      for (int64_t it = ch.begin(k); it < ch.end(k); ++it) {
        const int64_t n = it / nt, p0 = (it % nt) * kPT, P = std::min(kPT, HW - p0);
        const T* y = pl.y(n) + p0;
        const T* mu = pl.mu(n) + p0;
        const T* rs = pl.rstd(n) + p0;
        const T* u = U + n * C;
        const T um = UM[n], invC = T(1) / T(C);
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) bb[p] = 0;
        for (int c = 0; c < C; ++c) {
          const T* yc = y + c * HW;
          const T uc = u[c];
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) bb[p] += uc * (yc[p] - mu[p]) * rs[p];
        }
        for (int c = 0; c < C; ++c) {
          const T* yc = y + c * HW;
          const T* dyl = pl.dy(n) + c * HW + p0;
          T* d = dy + c * kPT;
          const T uc = u[c];
          T sb = 0;
#pragma omp simd reduction(+ : sb)
          for (int64_t p = 0; p < P; ++p) {
            const T yh = (yc[p] - mu[p]) * rs[p];
            d[p] = dyl[p] + rs[p] * (uc - um - yh * bb[p] * invC);
            sb += d[p];
          }
          gbp[c] += sb;
        }
        gemm_blk<T>(hid, C, P, w_outT.data(), dy, kPT, gh + n * hid * HW + p0, HW, nullptr, false);
        // dW_out^T (the 64-row dy is packed); h's panels are read in place
        if (h_panels) gemm_nt_apacked<T>(hid, C, P, image_tile(h, h_panels, n, p0, hid, HW), dy, kPT, gwp, C);
        else gemm_nt<T>(hid, C, P, image_tile(h, h_panels, n, p0, hid, HW), HW, dy, kPT, gwp, C);
      }
    }
  });
  // The chunk partials summed row by row (a strided loop per element took 5% of this backward on one thread),
  // then dW_out transposed back.
  const int64_t PW = int64_t(C) * hid + C;
  std::vector<T> wsum(PW);
  sum_rows<T>(wpart.data(), ch.n, PW, PW, wsum.data());
  for (int c = 0; c < C; ++c) {
    for (int i = 0; i < hid; ++i) gw_out[int64_t(c) * hid + i] = wsum[int64_t(i) * C + c];
    gb_out[c] = wsum[int64_t(C) * hid + c];
  }
}

// DFFM backward: grad_out go (N, C, HW) -> gh (N, hid, HW) and the 12 weights' gradients; stash: the forward's
// (DffmStash), or nullptr to recompute it (pass A); h_panels: h (and so dW_out's GEMM operand) in packed panels.
template <typename T>
void dffm_bwd_kernel(const DffmW<T>& w, const T* go, const T* h, const T* stash, int64_t N, int64_t HW, T* gh,
                     T* gw_out, T* gb_out, T* gln_w, T* gln_b, T* gw_gr, T* gb_gr, T* gw_lr, T* gb_lr, T* gw_ce,
                     T* gb_ce, T* gw_se, T* gb_se, bool h_panels = false) {
  const int C = w.C, R = w.R;
  const int64_t nt = (HW + kPT - 1) / kPT, items = N * nt;
  const DffmBwdPlanes<T> pl(w, stash, gh, N, HW);
  // Per-image sums of yhat: per tile (pass A, nt slots per image) or per image (the stash, 1 slot).
  const int64_t nsum = stash ? 1 : nt;
  std::vector<T> ysum_own(stash ? 0 : size_t(items) * C);
  const T* ysum = stash ? DffmStash<T>(const_cast<T*>(stash), N, C, R, HW).ysum(0) : ysum_own.data();
  if (!stash) dffm_bwd_front(w, pl, h, h_panels, N, HW, ysum_own.data());
  const DffmGlobals<T> gl(w, ysum, nsum, N, HW);
  const DffmPartLayout lay(C, R);
  std::vector<T> part(size_t(items) * lay.size, T(0));
  dffm_bwd_local(w, pl, gl, go, N, HW, lay, part.data());
  std::vector<T> U(size_t(N) * C), UM(N);
  dffm_bwd_globals(w, gl, part.data(), lay, ysum, nsum, N, HW, gln_w, gln_b, gw_gr, gb_gr, gw_lr, gb_lr, gw_ce, gb_ce,
                   gw_se, gb_se, U.data(), UM.data());
  dffm_bwd_out(w, pl, U.data(), UM.data(), h, h_panels, N, HW, gh, gw_out, gb_out);
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
