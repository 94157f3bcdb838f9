// SADFFM CPU kernels, shared pieces: the depthwise/gate vector type (dvec), packed GEMM panels (scatter, gate
// into panels, addressing), streaming stores, fixed chunking and band heights.
// Private to csrc/cpu/sadffm_cpu.cpp (one translation unit; the slices' functions live in an anonymous namespace).
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_gemm.h"
#include "cpu/cpu_pool.h"
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include "cpu/cpu_vmath.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {  // one translation unit: sadffm_cpu.cpp includes every slice

// Uninitialised scratch array (no zero fill of large buffers; large ones from the buffer pool of cpu_pool.h).
template <typename T> using Scratch = PoolBuf<T>;

// Fixed split of [0, items) into at most max_chunks contiguous chunks (independent of the thread count).
struct Chunks {
  int64_t items, n;
  Chunks(int64_t items_, int64_t max_chunks) : items(items_), n(std::min(items_, max_chunks)) {}
  int64_t begin(int64_t c) const { return c * items / n; }
  int64_t end(int64_t c) const { return (c + 1) * items / n; }
};

// Vectors of the depthwise convolutions and the gate: one 64-byte register where the compiler targets AVX-512 (the
// xreg of cpu_gemm.h, a whole panel row of floats), else the 32-byte vreg. Lane by lane the same expressions (the
// same bits) at either width; the GEMM epilogues keep vreg halves.
#if defined(__AVX512F__)
template <typename T> using dvec = xreg<T>;
template <typename T> inline dvec<T> dload(const T* p) { return xload(p); }
template <typename T> inline void dstore(T* p, dvec<T> v) { *reinterpret_cast<typename xreg_t<T>::utype*>(p) = v; }
#else
template <typename T> using dvec = vreg<T>;
template <typename T> inline dvec<T> dload(const T* p) { return vload(p); }
template <typename T> inline void dstore(T* p, dvec<T> v) { vstore(p, v); }
#endif
template <typename T> constexpr int kDLanes = int(sizeof(dvec<T>) / sizeof(T));
template <typename T> inline dvec<T> dsplat(T x) { return dvec<T>{} + x; }
template <typename T> using dmask = decltype(dvec<T>{} < dvec<T>{});

// Copies pixels [0, n) of channel c (contiguous in src) into packed GEMM panels dst[blk][ch][NR] (blk = pixel /
// NR, ldc channels per panel): the layout pack_b produces, written without a second pass, in whole-panel vector
// moves. Returns the sum of src[0:n] (fixed order: two vector partial sums, their lanes, then the tail), taken
// from the same loads.
template <typename T> inline T scatter_to_panels(const T* src, int64_t n, int c, int ldc, T* dst) {
  using V = vreg<T>;
  constexpr int NR = panel_width<T>(), L = kLanes<T>;
  V s0{}, s1{};
  int64_t blk = 0;
  for (; (blk + 1) * NR <= n; ++blk) {
    const V v0 = vload(src + blk * NR), v1 = vload(src + blk * NR + L);
    T* d = dst + (blk * ldc + c) * NR;
    vstore(d, v0);
    vstore(d + L, v1);
    s0 += v0;
    s1 += v1;
  }
  const V v = s0 + s1;
  T s = 0;
  for (int l = 0; l < L; ++l) s += v[l];
  for (int64_t w = blk * NR; w < n; ++w) {
    s += src[w];
    dst[(blk * ldc + c) * NR + (w - blk * NR)] = src[w];
  }
  return s;
}

// h = GELU(t1) * t2 on pixels [p0, p0 + n) of channel c, written straight into an image's packed panels
// dst[blk][ldc channels][NR] (p0 need not start a panel; no intermediate row of h). Stream: whole panels with
// non-temporal stores where dst is aligned to the vector size (the caller ends its parallel region with
// stream_fence()).
// Each value is the same expression as the plain loops' v_gelu(t1[p]) * t2[p], whole panels in vector registers.
// t2 == nullptr (Gated = false): h = GELU(t1), the ConvMLP's activation (sadffm_convmlp.h).
template <bool Stream, typename T, bool Gated = true>
inline void gate_to_panels(const T* t1, const T* t2, int64_t n, int64_t p0, int c, int ldc, T* dst) {
  using V = dvec<T>;
  constexpr int NR = panel_width<T>(), L = kDLanes<T>;
  static_assert(NR % L == 0, "whole vectors per panel row");
  auto h1 = [&](int64_t i) { return Gated ? v_gelu(t1[i]) * t2[i] : v_gelu(t1[i]); };
  int64_t i = 0;
  for (; i < n && (p0 + i) % NR != 0; ++i) dst[((p0 + i) / NR * ldc + c) * NR + (p0 + i) % NR] = h1(i);
  T* d = dst + ((p0 + i) / NR * ldc + c) * NR;
  const bool stream = Stream && reinterpret_cast<uintptr_t>(d) % sizeof(V) == 0;
  for (; i + NR <= n; i += NR, d += int64_t(ldc) * NR)
    for (int j = 0; j < NR; j += L) {
      V h = v_gelu(dload(t1 + i + j));
      if constexpr (Gated) h = h * dload(t2 + i + j);
      if (stream) stream_vec(d + j, h);
      else dstore(d + j, h);
    }
  for (int64_t j = 0; i < n; ++i, ++j) d[j] = h1(i);
}

// Elements of `channels` planes of HW pixels in the packed panel layout ([blk][channel][NR]) of pack_b.
template <typename T> constexpr int64_t panel_image_numel(int64_t channels, int64_t HW) {
  return channels * ((HW + panel_width<T>() - 1) / panel_width<T>()) * panel_width<T>();
}

// Zeroes the lanes past pixel n of the last, partial panel of `channels` channels in the packed panel layout
// [blk][channel][NR] (nothing where n fills its panels). A GEMM computes those lanes and never stores them, but
// left as the buffer's old contents they may be subnormal, and every FMA on a subnormal input takes a microcode
// assist: VAN's 7x7-stage MLP (1x256x7x7, 49 of 64 lanes used) ran 1.1 ms or 10-16 ms a call, by what the pool
// buffer last held.
template <typename T> inline void clear_panel_tail(T* panels, int64_t channels, int64_t n) {
  constexpr int64_t NR = panel_width<T>();
  if (n % NR == 0) return;
  T* last = panels + (n / NR) * channels * NR;
  for (int64_t c = 0; c < channels; ++c) std::fill(last + c * NR + n % NR, last + (c + 1) * NR, T(0));
}

// Pixels [p0, ...) of image n of a `channels`-channel tensor h of HW pixels per image: (N, channels, H, W) (row
// stride HW), or, with panels, its packed panel layout (p0 a multiple of the panel width).
template <typename T> inline const T* image_tile(const T* h, bool panels, int64_t n, int64_t p0, int64_t channels,
                                                 int64_t HW) {
  return panels ? h + n * panel_image_numel<T>(channels, HW) + p0 * channels : h + (n * channels) * HW + p0;
}

// dst[0:n] = src[0:n] with streaming (non-temporal) stores where the target allows: for data written once and
// read much later (the forward's stash), so the write neither reads the target lines first nor evicts the
// working set. Callers end their parallel region with stream_fence().
template <typename T> inline void copy_streaming(const T* src, int64_t n, T* dst) {
#if defined(__AVX__)
  int64_t i = 0;
  while (i < n && reinterpret_cast<uintptr_t>(dst + i) % sizeof(dvec<T>) != 0) { dst[i] = src[i]; ++i; }
  constexpr int L = kDLanes<T>;
  for (; i + L <= n; i += L) stream_vec(dst + i, dload(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::copy(src, src + n, dst);
#endif
}

// Rows per band of the banded kernels (work items: image x band): about target_px pixels, fewer where that makes
// at least 8 items in all, but not below min_px pixels where the image has them (1-row bands of a small image
// recomputed their halo rows several times over and paid a work item's fixed cost per row: 1x64x8x8 backward
// 1.0 ms). Of the heights from 3/4 of that up, the one that leaves the last band the least short (the largest of
// equals): a short last band left a thread idle at the end (1x64x180x320: 10 bands of 19 rows, the last of 9, so
// one thread ran 85 rows and the other 95; now 10 of 18). Depends only on the shapes, so the reduction order, and
// thus the result, does not depend on the number of threads.
inline int64_t band_rows(int64_t N, int64_t H, int64_t W, int64_t target_px, int64_t min_px = 1024) {
  const int64_t min_bands = (8 + N - 1) / N;
  int64_t band = std::max<int64_t>(1, target_px / W);
  band = std::min(band, (H + min_bands - 1) / min_bands);
  band = std::max(band, (min_px + W - 1) / W);
  band = std::max<int64_t>(1, std::min(band, H));
  const int64_t lo = std::max<int64_t>(std::max<int64_t>(1, (3 * band + 3) / 4), (min_px + W - 1) / W);
  int64_t best = band, short_rows = (band - H % band) % band;  // rows the last band lacks
  for (int64_t b = band - 1; b >= lo && short_rows > 0; --b) {
    const int64_t s = (b - H % b) % b;
    if (s < short_rows) best = b, short_rows = s;
  }
  return best;
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
