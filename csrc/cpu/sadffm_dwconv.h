// SADFFM CPU kernels, depthwise rows: a KxK depthwise convolution ('same' zero padding) over a band of rows in
// 64-byte (AVX-512) or 32-byte vectors, with pluggable stores (plain rows, packed GEMM panels with their sum, the
// gate's gradient as t2 is produced), and its weight gradient. Compile-time K for 1, 3, 5, 7; generic loops else.
// Private to csrc/cpu/sadffm_cpu.cpp.
#pragma once
#include "cpu/cpu_isa.h"
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/sadffm_common.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

// ----------------------------------------------------------------------------- depthwise plane helper
// Buffers that dw_rows reads carry kRowGuard readable elements before their first and after their last element:
// every column of a row is computed in whole vectors (the last W % L columns in one more vector, stored lane by
// lane), and in the first and last vectors of a row the loaded taps that fall outside the row (into the
// neighbouring row or the guard) are masked to zero in the register. That last vector reads up to L + K/2 - 1
// elements past its row.
constexpr int64_t kRowGuard = 32;
template <typename T> struct GuardedBuf {
  std::vector<T> v;
  explicit GuardedBuf(size_t n) : v(n + 2 * kRowGuard, T(0)) {}
  T* data() { return v.data() + kRowGuard; }
};

// Columns [w, w+L) of one output row: bias + sum_{ky,kx} wv[ky*K+kx] * rp[ky][w+kx-pad]; Edge: taps masked by
// m[kx] (lanes whose column falls outside the row read zero).
template <typename T, int K, bool Edge>
inline dvec<T> dw_vec(const T* const* rp, int64_t w, const dvec<T>* wv, dvec<T> bias, const dmask<T>* m) {
  using V = dvec<T>;
  constexpr int pad = K / 2;
  V s = bias;
  for (int kx = 0; kx < K; ++kx)
    for (int ky = 0; ky < K; ++ky) {
      V v = dload(rp[ky] + w + kx - pad);
      if (Edge) v = m[kx] ? v : V{};
      s += wv[ky * K + kx] * v;
    }
  return s;
}

// The same for two adjacent output rows at once (rp: their K + 1 input rows): every loaded vector feeds both rows'
// sums (K + 1 instead of 2K loads per tap column) and the two sums are independent chains.
template <typename T, int K, bool Edge>
inline void dw_vec2(const T* const* rp, int64_t w, const dvec<T>* wv, dvec<T> bias, const dmask<T>* m,
                    dvec<T>& s0, dvec<T>& s1) {
  using V = dvec<T>;
  constexpr int pad = K / 2;
  s0 = bias;
  s1 = bias;
  for (int kx = 0; kx < K; ++kx)
    for (int j = 0; j <= K; ++j) {
      V v = dload(rp[j] + w + kx - pad);
      if (Edge) v = m[kx] ? v : V{};
      if (j < K) s0 += wv[j * K + kx] * v;
      if (j > 0) s1 += wv[(j - 1) * K + kx] * v;
    }
}

// Vector v's neighbours one column to the left and to the right from three whole vectors of a row (prev, cur,
// next: columns [w - L, w + 2L)): lane shifts (VALIGND), not loads at w -+ 1 (each crosses a cache line).
// (GCC turns the generic shuffle of two loaded neighbours back into the unaligned load: the 64-byte float form is
// VALIGND itself.)
template <typename V, size_t... I> inline V shift_in_left(V prev, V cur, std::index_sequence<I...>) {
  return __builtin_shufflevector(prev, cur, (I + sizeof...(I) - 1)...);
}
template <typename V, size_t... I> inline V shift_in_right(V cur, V next, std::index_sequence<I...>) {
  return __builtin_shufflevector(cur, next, (I + 1)...);
}
#if defined(__AVX512F__)
inline xreg<float> shift_in_left(xreg<float> prev, xreg<float> cur, std::make_index_sequence<16>) {
  return (xreg<float>)_mm512_alignr_epi32((__m512i)cur, (__m512i)prev, 15);
}
inline xreg<float> shift_in_right(xreg<float> cur, xreg<float> next, std::make_index_sequence<16>) {
  return (xreg<float>)_mm512_alignr_epi32((__m512i)next, (__m512i)cur, 1);
}
#endif

// The inner vectors [1, nv - 1) of a pair of rows of a 3x3 depthwise conv (rp: the pair's 4 input rows): dw_vec2's
// sums (same FMA order, same bits) from one load per input row and vector, the +-1 column taps shifted in from the
// neighbouring vectors held in registers.
template <typename T, typename St>
inline void dw3_pair_inner(const T* const* rp, int64_t nv, const dvec<T>* wv, dvec<T> bias, St& st, int64_t q,
                           int64_t W) {
  using V = dvec<T>;
  constexpr int L = kDLanes<T>;
  using Lanes = std::make_index_sequence<L>;
  V pv[4], cv[4];
  for (int j = 0; j < 4; ++j) pv[j] = dload(rp[j]), cv[j] = dload(rp[j] + L);
  for (int64_t v = 1; v + 1 < nv; ++v) {
    V nx[4];
    for (int j = 0; j < 4; ++j) nx[j] = dload(rp[j] + (v + 1) * L);
    V s0 = bias, s1 = bias;
    for (int kx = 0; kx < 3; ++kx)
      for (int j = 0; j < 4; ++j) {
        const V t = kx == 0 ? shift_in_left(pv[j], cv[j], Lanes{}) : kx == 1 ? cv[j] : shift_in_right(cv[j], nx[j], Lanes{});
        if (j < 3) s0 += wv[j * 3 + kx] * t;
        if (j > 0) s1 += wv[(j - 1) * 3 + kx] * t;
      }
    st.vec(q + v * L, s0);
    st.vec(q + W + v * L, s1);
    for (int j = 0; j < 4; ++j) pv[j] = cv[j], cv[j] = nx[j];
  }
}

// The vector (0, 1, ..., L - 1) of lane indices.
template <typename T> inline dvec<T> lane_index() {
  static const dvec<T> idx = [] {
    dvec<T> v{};
    for (int l = 0; l < kDLanes<T>; ++l) v[l] = T(l);
    return v;
  }();
  return idx;
}

// Tap masks of the vectors of a row of W columns (L lanes) whose taps reach past an edge: the first (mf), the
// last whole one (ml) and the partial one after it (mt: columns [W - W % L, W) and beyond, there when W % L > 0):
// lane l of m[kx] is set where column (vector start) + l + kx - K/2 lies inside [0, W).
template <typename T, int K> inline void edge_masks(int64_t W, dmask<T>* mf, dmask<T>* ml, dmask<T>* mt) {
  using V = dvec<T>;
  constexpr int L = kDLanes<T>, pad = K / 2;
  const int64_t nv = W / L;
  const V idx = lane_index<T>();
  for (int kx = 0; kx < K; ++kx) {  // whole-vector ops (lane-by-lane inserts were a visible per-call cost)
    const V pf = idx + T(kx - pad), pl = idx + T((nv - 1) * L + kx - pad), pt = idx + T(nv * L + kx - pad);
    mf[kx] = (pf >= T(0)) & (pf < T(W));
    ml[kx] = (pl >= T(0)) & (pl < T(W));
    mt[kx] = (pt >= T(0)) & (pt < T(W));
  }
}

// Where dw_rows_k puts its results. Pixel q of the output band ((r - r0) * W + w) goes through st.vec(q, v) (L
// values from q; q is a multiple of L whenever W is) and st.px(q, value) (one value); st.row_hook() is called
// before each row (pair of rows) is computed.
// RowStore: row-major rows of W (row stride W), the plain output.
template <typename T> struct RowStore {
  T* out;
  void row_hook() const {}
  void vec(int64_t q, dvec<T> v) const { dstore(out + q, v); }
  void px(int64_t q, T v) const { out[q] = v; }
};

// Rows [r0, r1) of a KxK depthwise convolution ('same' zero padding), stored through st (RowStore: into out, row
// stride W): out[r-r0, w] = bias + sum_{ky,kx} wk[ky*K+kx] * plane[r+ky-pad, w+kx-pad], where plane holds the
// image rows [a, b) (row stride W) and every pixel outside the image is zero; zeros: a guarded row of W zeros (the
// stand-in for rows outside [a, b)).
template <typename T, int K, typename St>
void dw_rows_k(const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, const T* wk, T bias,
                St& st, const T* zeros) {
  static_assert(K / 2 + kDLanes<T> <= kRowGuard, "kernel too large for the row guard");
  using V = dvec<T>;
  constexpr int L = kDLanes<T>, pad = K / 2;
  V wv[K * K];
  for (int i = 0; i < K * K; ++i) wv[i] = dsplat(wk[i]);
  const V bv = dsplat(bias);
  const int64_t nv = W / L, w0 = nv * L, rem = W - w0;  // whole vectors per row; the partial one's columns
  dmask<T> mf[K], ml[K], mt[K];
  edge_masks<T, K>(W, mf, ml, mt);
  const T* rp[K + 1];
  auto row = [&](int64_t rr) { return (rr < a || rr >= b) ? zeros : plane + (rr - a) * W; };
  int64_t r = r0;
  for (; r + 1 < r1; r += 2) {  // pairs of rows
    st.row_hook();
    for (int j = 0; j <= K; ++j) rp[j] = row(r + j - pad);
    const int64_t q = (r - r0) * W;
    V s0, s1;
    if (nv > 0) {
      dw_vec2<T, K, true>(rp, 0, wv, bv, mf, s0, s1);
      st.vec(q, s0);
      st.vec(q + W, s1);
    }
    if constexpr (K == 3) {
      if (nv > 2) dw3_pair_inner<T>(rp, nv, wv, bv, st, q, W);
    } else {
      for (int64_t v = 1; v + 1 < nv; ++v) {
        dw_vec2<T, K, false>(rp, v * L, wv, bv, nullptr, s0, s1);
        st.vec(q + v * L, s0);
        st.vec(q + W + v * L, s1);
      }
    }
    if (nv > 1) {
      dw_vec2<T, K, true>(rp, (nv - 1) * L, wv, bv, ml, s0, s1);
      st.vec(q + (nv - 1) * L, s0);
      st.vec(q + W + (nv - 1) * L, s1);
    }
    if (rem > 0) {  // the last W % L columns: one more vector, stored lane by lane
      dw_vec2<T, K, true>(rp, w0, wv, bv, mt, s0, s1);
      for (int64_t l = 0; l < rem; ++l) {
        st.px(q + w0 + l, s0[l]);
        st.px(q + W + w0 + l, s1[l]);
      }
    }
  }
  for (; r < r1; ++r) {
    st.row_hook();
    for (int ky = 0; ky < K; ++ky) rp[ky] = row(r + ky - pad);
    const int64_t q = (r - r0) * W;
    if (nv > 0) st.vec(q, dw_vec<T, K, true>(rp, 0, wv, bv, mf));
    for (int64_t v = 1; v + 1 < nv; ++v) st.vec(q + v * L, dw_vec<T, K, false>(rp, v * L, wv, bv, nullptr));
    if (nv > 1) st.vec(q + (nv - 1) * L, dw_vec<T, K, true>(rp, (nv - 1) * L, wv, bv, ml));
    if (rem > 0) {
      const V s = dw_vec<T, K, true>(rp, w0, wv, bv, mt);
      for (int64_t l = 0; l < rem; ++l) st.px(q + w0 + l, s[l]);
    }
  }
}

// dw_rows_k for a run-time K of 1, 3, 5 or 7; false (nothing done) for any other K.
template <typename T, typename St>
bool dw_rows_fixed(int K, const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, const T* wk,
                    T bias, St& st, const T* zeros) {
  switch (K) {
    case 1: dw_rows_k<T, 1>(plane, a, b, r0, r1, W, wk, bias, st, zeros); return true;
    case 3: dw_rows_k<T, 3>(plane, a, b, r0, r1, W, wk, bias, st, zeros); return true;
    case 5: dw_rows_k<T, 5>(plane, a, b, r0, r1, W, wk, bias, st, zeros); return true;
    case 7: dw_rows_k<T, 7>(plane, a, b, r0, r1, W, wk, bias, st, zeros); return true;
    default: return false;
  }
}

template <typename T>
void dw_rows(const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, int K, const T* wk, T bias,
              T* out, const T* zeros) {
  RowStore<T> st{out};
  if (dw_rows_fixed(K, plane, a, b, r0, r1, W, wk, bias, st, zeros)) return;
  // Generic odd K: accumulate one tap at a time.
  const int pad = K / 2;
  for (int64_t r = r0; r < r1; ++r) {
    T* o = out + (r - r0) * W;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) o[w] = bias;
    for (int ky = 0; ky < K; ++ky) {
      const int64_t rr = r + ky - pad;
      if (rr < a || rr >= b) continue;
      const T* row = plane + (rr - a) * W;
      for (int kx = 0; kx < K; ++kx) {
        const T wt = wk[ky * K + kx];
        const int64_t off = kx - pad;
        const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(W, W - off);
        const T* src = row + off;
#pragma omp simd
        for (int64_t w = lo; w < hi; ++w) o[w] += wt * src[w];
      }
    }
  }
}

// PanelSumStore: channel c of packed GEMM panels (dst[blk][ldc channels][NR], the band's pixel q at panel q / NR),
// summing what it stores (vector lanes in one register, the scalar pixels apart); needs W % L == 0, so that every
// vector of L pixels lies inside one panel.
template <typename T> struct PanelSumStore {
  T* dst;
  int c, ldc;
  dvec<T> acc{};
  T sacc = 0;
  void row_hook() const {}
  T* at(int64_t q) const {
    constexpr int NR = panel_width<T>();
    return dst + ((q / NR) * ldc + c) * NR + q % NR;
  }
  void vec(int64_t q, dvec<T> v) {
    dstore(at(q), v);
    acc += v;
  }
  void px(int64_t q, T v) {
    *at(q) = v;
    sacc += v;
  }
  T sum() const {
    T s = 0;
    for (int l = 0; l < kDLanes<T>; ++l) s += acc[l];
    return s + sacc;
  }
};

// dw_rows of rows [r0, r1) written straight into channel c of the packed panels dst (ldc channels per panel) of
// the band; returns the sum of what it wrote. Where W is not a multiple of the vector width (or K is not 1, 3, 5,
// 7) the rows go through rowbuf ((r1 - r0) * W) and scatter_to_panels.
template <typename T>
T dw_rows_to_panels(const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, int K, const T* wk,
                     T bias, const T* zeros, T* rowbuf, int c, int ldc, T* dst) {
  if (W % kDLanes<T> == 0) {
    PanelSumStore<T> st{dst, c, ldc};
    if (dw_rows_fixed(K, plane, a, b, r0, r1, W, wk, bias, st, zeros)) return st.sum();
  }
  dw_rows(plane, a, b, r0, r1, W, K, wk, bias, rowbuf, zeros);
  return scatter_to_panels(rowbuf, (r1 - r0) * W, c, ldc, dst);
}

// The gate's gradient as the depthwise conv of t2 produces it: t1 already in d1, grad_h in gr (row-major rows of
// the band); d1 = gr * t2 * GELU'(t1), d2 = gr * GELU(t1), without writing t2 first.
template <typename T> struct GateGradStore {
  T *d1, *d2;
  const T* gr;
  void row_hook() const {}
  __attribute__((always_inline)) void vec(int64_t q, dvec<T> t2) const {
    const dvec<T> t1 = dload(d1 + q), g = dload(gr + q);
    dstore(d1 + q, g * t2 * v_gelu_grad(t1));
    dstore(d2 + q, g * v_gelu(t1));
  }
  void px(int64_t q, T t2) const {
    const T t1 = d1[q], g = gr[q];
    d1[q] = g * t2 * v_gelu_grad(t1);
    d2[q] = g * v_gelu(t1);
  }
};

// Prefetches lines of up to three arrays into L2 a few at a time (step()), so that a loop that calls step() once
// per row spreads them over its work: a burst of hundreds of prefetches stalls on the line fill buffers with no
// work to overlap.
struct LinePrefetcher {
  const char* base[3] = {};
  int64_t nlines[3] = {}, cur = 0, end = 0, per_step = 1;
  void add(const void* p, int64_t bytes) {
    for (int i = 0; i < 3; ++i)
      if (!base[i]) {
        base[i] = static_cast<const char*>(p);
        nlines[i] = (bytes + 63) / 64;
        end = std::max(end, nlines[i]);
        return;
      }
  }
  void spread_over(int64_t steps) { per_step = steps > 0 ? (end + steps - 1) / steps : end; }
  void step() {
    for (const int64_t e = std::min(end, cur + per_step); cur < e; ++cur)
      for (int i = 0; i < 3; ++i)
        if (cur < nlines[i]) __builtin_prefetch(base[i] + cur * 64, 0, 2);
  }
  void finish() {  // whatever is left, at once
    per_step = end;
    step();
  }
};
// A dw_rows_k store that advances a LinePrefetcher once per row (pair).
template <typename St> struct PrefetchingStore : St {
  LinePrefetcher* pf;
  PrefetchingStore(const St& st, LinePrefetcher* p) : St(st), pf(p) {}
  void row_hook() const { pf->step(); }
};

// t = DW(u1), DW(u2) on rows [r0, r1) and the gate's gradient from it: d1 = gr * t2 * GELU'(t1), d2 = gr *
// GELU(t1) (row-major, row stride W); w1, b1 / w2, b2: the two channels' taps and biases. pf (or nullptr): lines
// to prefetch while it runs, spread over its rows.
template <typename T>
void dw_gate_grad(const T* u1, const T* u2, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, int K,
                  const T* w1, T b1, const T* w2, T b2, const T* gr, T* d1, T* d2, const T* zeros,
                  LinePrefetcher* pf = nullptr) {
  auto run = [&](auto& st1, auto& st) {
    if (!dw_rows_fixed(K, u1, a, b, r0, r1, W, w1, b1, st1, zeros))
      dw_rows(u1, a, b, r0, r1, W, K, w1, b1, d1, zeros);
    if (dw_rows_fixed(K, u2, a, b, r0, r1, W, w2, b2, st, zeros)) return;
    dw_rows(u2, a, b, r0, r1, W, K, w2, b2, d2, zeros);
    const int64_t n = (r1 - r0) * W;
    for (int64_t p = 0; p < n; ++p) st.px(p, d2[p]);
  };
  RowStore<T> st1{d1};
  GateGradStore<T> st{d1, d2, gr};
  if (!pf) return run(st1, st);
  pf->spread_over(r1 - r0 + 2);  // two planes of (r1 - r0) / 2 row pairs
  PrefetchingStore<RowStore<T>> pst1(st1, pf);
  PrefetchingStore<GateGradStore<T>> pst(st, pf);
  run(pst1, pst);
  pf->finish();
}


// Depthwise weight and bias gradient of rows [r0, r1): gw[ky*K+kx] = sum_{r0<=r<r1, w<W} d[r-r0, w] *
// plane[r+ky-pad, w+kx-pad] and gb = sum d, where plane holds the image rows [a, b) (row stride W; guarded as for
// dw_rows) and every pixel outside the image is zero; zeros: a guarded row of W zeros. Read in place: the taps
// of a row's first, last whole and partial vectors that fall outside it are masked to zero in the register.
// Register accumulators per tap (vectors over w, the last W % L columns in one masked vector) for K = 1, 3, 5, 7,
// per-tap loops otherwise; fixed order.
template <typename T, int K>
void dw_wgrad_k(const T* d, const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W,
                const T* zeros, T* gw, T* gb) {
  using V = dvec<T>;
  constexpr int L = kDLanes<T>, pad = K / 2;
  const int64_t nv = W / L, w0 = nv * L;
  dmask<T> mf[K], ml[K], mt[K];
  edge_masks<T, K>(W, mf, ml, mt);
  // lanes of the partial last vector inside the row (its d lanes past the row are zeroed: they add nothing)
  const dmask<T> dm = lane_index<T>() + T(w0) < T(W);
  V acc[K * K], dsum{};
  for (int k = 0; k < K * K; ++k) acc[k] = V{};
  const T* rp[K];
  auto step = [&](auto edge, const T* dr, int64_t w, const dmask<T>* m, const dmask<T>* d_lanes) {
    V dv = dload(dr + w);
    if (d_lanes) dv = *d_lanes ? dv : V{};
    dsum += dv;
    for (int ky = 0; ky < K; ++ky)
      for (int kx = 0; kx < K; ++kx) {
        V u = dload(rp[ky] + w + kx - pad);
        if constexpr (decltype(edge)::value) u = m[kx] ? u : V{};
        acc[ky * K + kx] += dv * u;
      }
  };
  const std::true_type edge;
  const std::false_type inner;
  for (int64_t r = r0; r < r1; ++r) {
    const T* dr = d + (r - r0) * W;
    for (int ky = 0; ky < K; ++ky) {
      const int64_t rr = r + ky - pad;
      rp[ky] = (rr < a || rr >= b) ? zeros : plane + (rr - a) * W;
    }
    if (nv > 0) step(edge, dr, 0, mf, nullptr);
    for (int64_t v = 1; v + 1 < nv; ++v) step(inner, dr, v * L, nullptr, nullptr);
    if (nv > 1) step(edge, dr, (nv - 1) * L, ml, nullptr);
    if (w0 < W) step(edge, dr, w0, mt, &dm);  // the last W % L columns
  }
  for (int k = 0; k < K * K; ++k) {
    T sum = 0;
    for (int l = 0; l < L; ++l) sum += acc[k][l];
    gw[k] = sum;
  }
  T sum = 0;
  for (int l = 0; l < L; ++l) sum += dsum[l];
  *gb = sum;
}

// Scratch elements dw_wgrad needs in colacc (only the generic path uses it).
inline size_t dw_wgrad_colacc_size(int K, int64_t W) {
  return (K == 1 || K == 3 || K == 5 || K == 7) ? 0 : size_t(K) * K * W;
}

template <typename T>
void dw_wgrad(const T* d, const T* plane, int64_t a, int64_t b, int64_t r0, int64_t r1, int64_t W, int K,
              const T* zeros, T* gw, T* gb, T* colacc) {
  switch (K) {
    case 1: return dw_wgrad_k<T, 1>(d, plane, a, b, r0, r1, W, zeros, gw, gb);
    case 3: return dw_wgrad_k<T, 3>(d, plane, a, b, r0, r1, W, zeros, gw, gb);
    case 5: return dw_wgrad_k<T, 5>(d, plane, a, b, r0, r1, W, zeros, gw, gb);
    case 7: return dw_wgrad_k<T, 7>(d, plane, a, b, r0, r1, W, zeros, gw, gb);
    default: break;
  }
  const int pad = K / 2;
  T sb = 0;
  for (int64_t p = 0; p < (r1 - r0) * W; ++p) sb += d[p];
  *gb = sb;
  // Generic odd K: per-tap column accumulators colacc[K*K][W] (dw_wgrad_colacc_size), one sum per tap at the end.
  std::fill(colacc, colacc + int64_t(K) * K * W, T(0));
  for (int64_t r = r0; r < r1; ++r)
    for (int ky = 0; ky < K; ++ky) {
      const int64_t rr = r + ky - pad;
      if (rr < a || rr >= b) continue;  // zero rows add nothing
      const T* dr = d + (r - r0) * W;
      const T* ur = plane + (rr - a) * W;
      for (int kx = 0; kx < K; ++kx) {
        const int64_t off = kx - pad, lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(W, W - off);
        T* ca = colacc + int64_t(ky * K + kx) * W;
#pragma omp simd
        for (int64_t w = lo; w < hi; ++w) ca[w] += dr[w] * ur[w + off];
      }
    }
  for (int k = 0; k < K * K; ++k) {
    T s = 0;
    for (int64_t w = 0; w < W; ++w) s += colacc[int64_t(k) * W + w];
    gw[k] = s;
  }
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
