// MOLRCM CUDA kernels (torch-free): dw_mix forward/backward and the fused epilogues of the 1x1 convs.
// Launchers are declared in molrcm_kernels.cuh; the ATen wrapper is molrcm_cuda.cpp.
//
// dw_mix design: one thread block per (n, channel c, output tile of tile_h x tile_w pixels).
//   R0 = d0*(K0-1)/2 (region conv radius), R1 = d*(K-1)/2 (radius of the channel's dilated conv, 0 for the
//   copied channels c1 <= c < c1+c2, which run as a 1x1 conv of weight 1 and bias 0).
//   forward: shared q tile with halo R0+R1 (zero outside the image) -> shared r on tile+R1 (r = 0 outside
//            the image: the dilated conv pads r, not q) -> y on the tile.
//   backward: shared q and grad_y on tile+R0+R1; r on tile+R1 -> per-tap partial sums of grad w (channel conv);
//            grad_r = transposed dilated conv (flipped taps) of grad_y on tile+R0 (zero outside the image),
//            stored over r's buffer -> grad_q on the tile (transposed region conv) and per-tap partial sums
//            of grad w0. Partials go to a global workspace [channel][block][tap] and a second kernel sums
//            them over blocks in a fixed order: deterministic, fp32 (fp64 for double), no atomics.
// All arithmetic in acc_t (float for half/bfloat16/float, double for double).
#include "cuda/molrcm_kernels.cuh"

#include <algorithm>

#include "cuda/cuda_smem.cuh"
#include "common/eimn_math.h"

#ifndef EIMN_CUDA_EMU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define EIMN_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define EIMN_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace eimn::cuda::molrcm {
namespace {

// ---- element conversions (explicit, independent of the __CUDA_NO_HALF_CONVERSIONS__ macros) ----
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
#ifndef EIMN_CUDA_EMU
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
#endif

constexpr int kThreads = 256;  // block size of every kernel here (multiple of 32)
constexpr int kWarp = 32;

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  // xor butterfly: fixed order, every lane ends with the same (deterministic) sum
  for (int m = kWarp / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Per-channel parameters of the second (channel-group) conv of dw_mix.
struct Group {
  int K, d, R;      // kernel size, dilation, radius d*(K-1)/2
  int64_t cg;       // channel index inside its group
  int which;        // 1: spatial_1 (w1), 0: copy, 2: spatial_2 (w2)
};

__device__ __forceinline__ Group channel_group(const DwMixShape& s, int64_t c) {
  Group g;
  if (c < s.c1) {
    g.K = s.K1; g.d = s.d1; g.cg = c; g.which = 1;
  } else if (c < s.c1 + s.c2) {
    g.K = 1; g.d = 1; g.cg = c - s.c1; g.which = 0;
  } else {
    g.K = s.K2; g.d = s.d2; g.cg = c - s.c1 - s.c2; g.which = 2;
  }
  g.R = g.d * (g.K - 1) / 2;
  return g;
}

// Block -> (n, c, tile) decomposition shared by forward and backward (blockIdx.x only: no grid.y/z limits).
struct BlockPos {
  int64_t n, c, pidx;  // pidx = (n*tiles_y + ty)*tiles_x + tx: index of this block's partial sums
  int64_t oy0, ox0;    // top-left output pixel of the tile
};

__device__ __forceinline__ BlockPos block_pos(const DwMixShape& s, int tile_w, int tile_h, int64_t tiles_x,
                                              int64_t tiles_y) {
  int64_t b = blockIdx.x;
  BlockPos p;
  const int64_t tx = b % tiles_x; b /= tiles_x;
  const int64_t ty = b % tiles_y; b /= tiles_y;
  p.c = b % s.C;
  p.n = b / s.C;
  p.pidx = (p.n * tiles_y + ty) * tiles_x + tx;
  p.oy0 = ty * tile_h;
  p.ox0 = tx * tile_w;
  return p;
}

// Loads the (n, c) plane of `src` over rows [y0, y0+h) x cols [x0, x0+w) into dst (row pitch w), 0 outside.
template <typename T, typename A>
__device__ __forceinline__ void load_tile(A* dst, const T* plane, int64_t H, int64_t W, int64_t y0, int64_t x0,
                                          int h, int w) {
  for (int i = threadIdx.x; i < h * w; i += blockDim.x) {
    const int ly = i / w, lx = i - (i / w) * w;
    const int64_t gy = y0 + ly, gx = x0 + lx;
    dst[i] = (gy >= 0 && gy < H && gx >= 0 && gx < W) ? to_acc(plane[gy * W + gx]) : A(0);
  }
}

// Loads the depthwise weights of channel c (region conv) and of its group conv into shared memory.
template <typename T, typename A>
__device__ __forceinline__ void load_weights(A* sw0, A* sw, A* sb, const DwMixShape& s, const Group& g, int64_t c,
                                             const T* w0, const T* b0, const T* w1, const T* b1, const T* w2,
                                             const T* b2) {
  const int n0 = s.K0 * s.K0, n1 = g.K * g.K;
  for (int i = threadIdx.x; i < n0; i += blockDim.x) sw0[i] = to_acc(w0[c * n0 + i]);
  for (int i = threadIdx.x; i < n1; i += blockDim.x) {
    sw[i] = g.which == 1 ? to_acc(w1[g.cg * n1 + i]) : g.which == 2 ? to_acc(w2[g.cg * n1 + i]) : A(1);
  }
  if (threadIdx.x == 0) {
    sb[0] = to_acc(b0[c]);
    // b1/b2 may be null in backward (not needed there)
    sb[1] = (g.which == 1 && b1) ? to_acc(b1[g.cg]) : (g.which == 2 && b2) ? to_acc(b2[g.cg]) : A(0);
  }
}

// r over rows [ry0, ry0+rh) x cols [rx0, rx0+rw) from the q tile whose origin is (ry0-R0, rx0-R0),
// pitch qw. r = 0 outside the image.
template <typename A>
__device__ __forceinline__ void compute_r(A* sr, const A* sq, const A* sw0, A b0, int K0, int d0, int64_t H,
                                          int64_t W, int64_t ry0, int64_t rx0, int rh, int rw, int qw) {
  for (int i = threadIdx.x; i < rh * rw; i += blockDim.x) {
    const int ly = i / rw, lx = i - (i / rw) * rw;
    const int64_t gy = ry0 + ly, gx = rx0 + lx;
    A acc = A(0);
    if (gy >= 0 && gy < H && gx >= 0 && gx < W) {
      acc = b0;
      for (int a = 0; a < K0; ++a) {
        const A* row = sq + (ly + a * d0) * qw + lx;
        for (int b = 0; b < K0; ++b) acc += sw0[a * K0 + b] * row[b * d0];
      }
    }
    sr[i] = acc;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dw_mix_forward_kernel(DwMixShape s, int tile_w, int tile_h,
                                                                  int64_t tiles_x, int64_t tiles_y, const T* q,
                                                                  const T* w0, const T* b0, const T* w1,
                                                                  const T* b1, const T* w2, const T* b2, T* y) {
  using A = acc_t<T>;
  EIMN_DYN_SMEM(smem_raw);
  const BlockPos bp = block_pos(s, tile_w, tile_h, tiles_x, tiles_y);
  const Group g = channel_group(s, bp.c);
  const int R0 = s.d0 * (s.K0 - 1) / 2, R1 = g.R, Hq = R0 + R1;
  const int qh = tile_h + 2 * Hq, qw = tile_w + 2 * Hq;
  const int rh = tile_h + 2 * R1, rw = tile_w + 2 * R1;
  // layout: [w0 taps][group taps][b0, b][q tile][r tile]  (all acc_t; sizes per block <= the plan's)
  A* sw0 = reinterpret_cast<A*>(smem_raw);
  A* sw = sw0 + s.K0 * s.K0;
  A* sb = sw + g.K * g.K;
  A* sq = sb + 2;
  A* sr = sq + qh * qw;

  const int64_t plane = (bp.n * s.C + bp.c) * s.H * s.W;
  load_weights(sw0, sw, sb, s, g, bp.c, w0, b0, w1, b1, w2, b2);
  load_tile(sq, q + plane, s.H, s.W, bp.oy0 - Hq, bp.ox0 - Hq, qh, qw);
  __syncthreads();
  compute_r(sr, sq, sw0, sb[0], s.K0, s.d0, s.H, s.W, bp.oy0 - R1, bp.ox0 - R1, rh, rw, qw);
  __syncthreads();
  const A bias = sb[1];
  for (int i = threadIdx.x; i < tile_h * tile_w; i += blockDim.x) {
    const int ly = i / tile_w, lx = i - (i / tile_w) * tile_w;
    const int64_t gy = bp.oy0 + ly, gx = bp.ox0 + lx;
    if (gy >= s.H || gx >= s.W) continue;
    A acc = bias;
    for (int a = 0; a < g.K; ++a) {
      const A* row = sr + (ly + a * g.d) * rw + lx;
      for (int b = 0; b < g.K; ++b) acc += sw[a * g.K + b] * row[b * g.d];
    }
    y[plane + gy * s.W + gx] = from_acc<T>(acc);
  }
}

// Per-tap partial sums over the tile: tap t < K*K: sum_p gout(p) * in(p + d*(tap offset)); t == K*K: sum_p gout(p).
// gout: pitch gpitch, tile pixel (ly,lx) at (ly+goff)*gpitch + lx+goff. in: pitch ipitch, tap (a,b) of pixel
// (ly,lx) at (ly + ioff + a*d)*ipitch + lx + ioff + b*d. gout must be 0 outside the image.
// One warp per tap (fixed lane-strided order + xor butterfly): deterministic.
template <typename A>
__device__ __forceinline__ void tap_partials(A* out, const A* gout, int gpitch, int goff, const A* in, int ipitch,
                                             int ioff, int K, int d, int tile_h, int tile_w) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, nwarps = blockDim.x / kWarp;
  const int ntap = K * K + 1, npix = tile_h * tile_w;
  for (int t = warp; t < ntap; t += nwarps) {
    const int a = t / K, b = t - (t / K) * K;  // unused for the bias tap
    A acc = A(0);
    for (int i = lane; i < npix; i += kWarp) {
      const int ly = i / tile_w, lx = i - (i / tile_w) * tile_w;
      const A go = gout[(ly + goff) * gpitch + lx + goff];
      acc += (t == K * K) ? go : go * in[(ly + ioff + a * d) * ipitch + lx + ioff + b * d];
    }
    acc = warp_sum(acc);
    if (lane == 0) out[t] = acc;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dw_mix_backward_kernel(DwMixShape s, int tile_w, int tile_h,
                                                                   int64_t tiles_x, int64_t tiles_y, int64_t P,
                                                                   const T* gy, const T* q, const T* w0,
                                                                   const T* b0, const T* w1, const T* w2, T* gq,
                                                                   acc_t<T>* ws0, acc_t<T>* ws1, acc_t<T>* ws2) {
  using A = acc_t<T>;
  EIMN_DYN_SMEM(smem_raw);
  const BlockPos bp = block_pos(s, tile_w, tile_h, tiles_x, tiles_y);
  const Group g = channel_group(s, bp.c);
  const int R0 = s.d0 * (s.K0 - 1) / 2, R1 = g.R, Hq = R0 + R1;
  const int qh = tile_h + 2 * Hq, qw = tile_w + 2 * Hq;  // q and grad_y tiles (origin oy0-Hq, ox0-Hq)
  const int rh = tile_h + 2 * R1, rw = tile_w + 2 * R1;  // r tile (origin oy0-R1)
  const int gh = tile_h + 2 * R0, gw = tile_w + 2 * R0;  // grad_r tile (origin oy0-R0), reuses r's buffer
  const int rsize = rh * rw > gh * gw ? rh * rw : gh * gw;
  (void)rsize;
  A* sw0 = reinterpret_cast<A*>(smem_raw);
  A* sw = sw0 + s.K0 * s.K0;
  A* sb = sw + g.K * g.K;
  A* sq = sb + 2;
  A* sg = sq + qh * qw;   // grad_y tile
  A* sr = sg + qh * qw;   // r, later grad_r (size rsize)

  const int64_t plane = (bp.n * s.C + bp.c) * s.H * s.W;
  load_weights<T, A>(sw0, sw, sb, s, g, bp.c, w0, b0, w1, nullptr, w2, nullptr);
  load_tile(sq, q + plane, s.H, s.W, bp.oy0 - Hq, bp.ox0 - Hq, qh, qw);
  load_tile(sg, gy + plane, s.H, s.W, bp.oy0 - Hq, bp.ox0 - Hq, qh, qw);
  __syncthreads();

  // 1. grad of the group conv weights: needs r on tile+R1.
  if (g.which != 0) {
    compute_r(sr, sq, sw0, sb[0], s.K0, s.d0, s.H, s.W, bp.oy0 - R1, bp.ox0 - R1, rh, rw, qw);
    __syncthreads();
    A* out = (g.which == 1 ? ws1 : ws2) + (g.cg * P + bp.pidx) * (g.K * g.K + 1);
    // grad_y pixel (ly,lx) at (ly+Hq, lx+Hq) in sg; r at (ly + a*d, lx + b*d) in sr (offset 0).
    tap_partials(out, sg, qw, Hq, sr, rw, 0, g.K, g.d, tile_h, tile_w);
    __syncthreads();  // sr is overwritten below
  }

  // 2. grad_r on tile+R0 (0 outside the image): grad_r(p) = sum_{a,b} w[a,b] grad_y(p - d*(a-k), p - d*(b-k)).
  //    grad_r local (ly,lx) <-> global (oy0-R0+ly); grad_y local row = ly + 2*R1 - a*d (origin oy0-Hq).
  for (int i = threadIdx.x; i < gh * gw; i += blockDim.x) {
    const int ly = i / gw, lx = i - (i / gw) * gw;
    const int64_t py = bp.oy0 - R0 + ly, px = bp.ox0 - R0 + lx;
    A acc = A(0);
    if (py >= 0 && py < s.H && px >= 0 && px < s.W) {
      for (int a = 0; a < g.K; ++a) {
        const A* row = sg + (ly + 2 * R1 - a * g.d) * qw + lx + 2 * R1;
        for (int b = 0; b < g.K; ++b) acc += sw[a * g.K + b] * row[-b * g.d];
      }
    }
    sr[i] = acc;
  }
  __syncthreads();

  // 3. grad_q on the tile: grad_q(p) = sum_{a,b} w0[a,b] grad_r(p - d0*(a-k0), ...);
  //    grad_r local row = ly + 2*R0 - a*d0.
  for (int i = threadIdx.x; i < tile_h * tile_w; i += blockDim.x) {
    const int ly = i / tile_w, lx = i - (i / tile_w) * tile_w;
    const int64_t py = bp.oy0 + ly, px = bp.ox0 + lx;
    if (py >= s.H || px >= s.W) continue;
    A acc = A(0);
    for (int a = 0; a < s.K0; ++a) {
      const A* row = sr + (ly + 2 * R0 - a * s.d0) * gw + lx + 2 * R0;
      for (int b = 0; b < s.K0; ++b) acc += sw0[a * s.K0 + b] * row[-b * s.d0];
    }
    gq[plane + py * s.W + px] = from_acc<T>(acc);
  }
  // 4. grad w0, b0: grad_r pixel (ly,lx) at (ly+R0, lx+R0) in sr; q at (ly + R1 + a*d0, ...) in sq.
  tap_partials(ws0 + (bp.c * P + bp.pidx) * (s.K0 * s.K0 + 1), sr, gw, R0, sq, qw, R1, s.K0, s.d0, tile_h, tile_w);
}

// out_w[row, l] (l < L-1) and out_b[row] (l == L-1) = sum_{p < P} ws[row, p, l], in fixed order.
// One warp per (row, l).
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_partials_kernel(const acc_t<T>* ws, int64_t rows, int64_t P,
                                                                   int L, T* out_w, T* out_b) {
  using A = acc_t<T>;
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (wid >= rows * L) return;  // whole warps exit together (blockDim multiple of 32)
  const int64_t row = wid / L;
  const int l = static_cast<int>(wid - row * L);
  A acc = A(0);
  for (int64_t p = lane; p < P; p += kWarp) acc += ws[(row * P + p) * L + l];
  acc = warp_sum(acc);
  if (lane == 0) {
    if (l < L - 1) out_w[row * (L - 1) + l] = from_acc<T>(acc);
    else out_b[row] = from_acc<T>(acc);
  }
}

// ------------------------------------- 1x1 epilogues -------------------------------------------
// 1-D grid-stride loops over int64 indices (no grid dimension limits).

inline unsigned int grid_for(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > (int64_t(1) << 20)) blocks = int64_t(1) << 20;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

__device__ __forceinline__ int64_t global_tid() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t global_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename T>
__global__ void __launch_bounds__(kThreads) proj_qv_fwd_kernel(int64_t N, int64_t Cq, int64_t Cv, int64_t HW,
                                                               const acc_t<T>* t, const T* bq, const T* bv, T* q,
                                                               T* v) {
  using A = acc_t<T>;
  const int64_t Ct = Cq + Cv, total = N * Ct * HW;
  for (int64_t i = global_tid(); i < total; i += global_stride()) {
    const int64_t p = i % HW, nc = i / HW, ch = nc % Ct, n = nc / Ct;
    const A x = t[i];
    if (ch < Cq) q[(n * Cq + ch) * HW + p] = from_acc<T>(gelu<A>(x + to_acc(bq[ch])));
    else v[(n * Cv + ch - Cq) * HW + p] = from_acc<T>(x + to_acc(bv[ch - Cq]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) proj_qv_bwd_kernel(int64_t N, int64_t Cq, int64_t Cv, int64_t HW,
                                                               const acc_t<T>* tq, const T* bq, const T* gq,
                                                               const T* gv, T* G) {
  using A = acc_t<T>;
  const int64_t Ct = Cq + Cv, total = N * Ct * HW;
  for (int64_t i = global_tid(); i < total; i += global_stride()) {
    const int64_t p = i % HW, nc = i / HW, ch = nc % Ct, n = nc / Ct;
    if (ch < Cq) {
      const int64_t j = (n * Cq + ch) * HW + p;
      G[i] = from_acc<T>(to_acc(gq[j]) * gelu_grad<A>(tq[j] + to_acc(bq[ch])));
    } else {
      G[i] = gv[(n * Cv + ch - Cq) * HW + p];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gate_fwd_kernel(int64_t N, int64_t C, int64_t HW, const acc_t<T>* f,
                                                            const T* bf, const T* v, T* s) {
  using A = acc_t<T>;
  const int64_t total = N * C * HW;
  for (int64_t i = global_tid(); i < total; i += global_stride()) {
    const int64_t ch = (i / HW) % C;
    s[i] = from_acc<T>(silu<A>(f[i] + to_acc(bf[ch])) * to_acc(v[i]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bias_kernel(int64_t N, int64_t C, int64_t HW, const acc_t<T>* t,
                                                        const T* b, T* out) {
  const int64_t total = N * C * HW;
  for (int64_t i = global_tid(); i < total; i += global_stride()) {
    out[i] = from_acc<T>(t[i] + to_acc(b[(i / HW) % C]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gate_bwd_kernel(int64_t N, int64_t C, int64_t HW, const acc_t<T>* f,
                                                            const T* bf, const T* v, const acc_t<T>* gs, T* s,
                                                            T* gv, T* gf) {
  using A = acc_t<T>;
  const int64_t total = N * C * HW;
  for (int64_t i = global_tid(); i < total; i += global_stride()) {
    const int64_t ch = (i / HW) % C;
    const A z = f[i] + to_acc(bf[ch]);
    const A sz = silu<A>(z), vv = to_acc(v[i]), g = gs[i];
    s[i] = from_acc<T>(sz * vv);
    gv[i] = from_acc<T>(g * sz);
    gf[i] = from_acc<T>(g * vv * silu_grad<A>(z));
  }
}

// ------------------------------------- host side -----------------------------------------------

size_t dw_mix_smem(const DwMixShape& s, int tw, int th, bool backward, size_t acc_bytes) {
  const int64_t R0 = int64_t(s.d0) * (s.K0 - 1) / 2;
  int64_t R1 = 0, K = 1;  // the largest group radius / kernel present
  if (s.c1 > 0) { R1 = std::max<int64_t>(R1, int64_t(s.d1) * (s.K1 - 1) / 2); K = std::max<int64_t>(K, s.K1); }
  if (s.C - s.c1 - s.c2 > 0) { R1 = std::max<int64_t>(R1, int64_t(s.d2) * (s.K2 - 1) / 2); K = std::max<int64_t>(K, s.K2); }
  const int64_t qt = (th + 2 * (R0 + R1)) * (tw + 2 * (R0 + R1));
  const int64_t rt = (th + 2 * R1) * (tw + 2 * R1);
  const int64_t gt = (th + 2 * R0) * (tw + 2 * R0);
  const int64_t head = int64_t(s.K0) * s.K0 + K * K + 2;
  // Per block the layout uses its own group's R1 <= the max, so these sizes bound every block.
  const int64_t n = backward ? head + 2 * qt + std::max(rt, gt) : head + qt + rt;
  return static_cast<size_t>(n) * acc_bytes;
}

size_t acc_size(DType dt) { return dt == DType::kFloat64 ? sizeof(double) : sizeof(float); }

template <typename T> const T* cp(const void* p) { return static_cast<const T*>(p); }
template <typename T> T* mp(void* p) { return static_cast<T*>(p); }

template <typename T>
cudaError_t dw_mix_forward_t(const DwMixShape& s, const DwMixPlan& p, const void* q, const void* w0, const void* b0,
                             const void* w1, const void* b1, const void* w2, const void* b2, void* y,
                             cudaStream_t st) {
  const int64_t blocks = s.N * s.C * p.tiles_y * p.tiles_x;
  if (blocks == 0) return cudaSuccess;
  if (cudaError_t e = prepare_dynamic_smem(dw_mix_forward_kernel<T>, p.smem_bytes); e != cudaSuccess) return e;
  EIMN_LAUNCH(dw_mix_forward_kernel<T>, static_cast<unsigned int>(blocks), p.threads, p.smem_bytes, st)(
      s, p.tile_w, p.tile_h, p.tiles_x, p.tiles_y, cp<T>(q), cp<T>(w0), cp<T>(b0), cp<T>(w1), cp<T>(b1), cp<T>(w2),
      cp<T>(b2), mp<T>(y));
  return cudaGetLastError();
}

template <typename T>
cudaError_t reduce_partials(const void* ws, int64_t rows, int64_t P, int L, void* out_w, void* out_b,
                            cudaStream_t st) {
  if (rows == 0) return cudaSuccess;
  const int64_t warps = rows * L, per_block = kThreads / kWarp;
  const int64_t blocks = (warps + per_block - 1) / per_block;
  EIMN_LAUNCH(reduce_partials_kernel<T>, static_cast<unsigned int>(blocks), kThreads, 0, st)(
      static_cast<const acc_t<T>*>(ws), rows, P, L, mp<T>(out_w), mp<T>(out_b));
  return cudaGetLastError();
}

template <typename T>
cudaError_t dw_mix_backward_t(const DwMixShape& s, const DwMixPlan& p, const void* gy, const void* q,
                              const void* w0, const void* b0, const void* w1, const void* w2, void* gq, void* gw0,
                              void* gb0, void* gw1, void* gb1, void* gw2, void* gb2, void* ws0, void* ws1,
                              void* ws2, cudaStream_t st) {
  using A = acc_t<T>;
  const int64_t blocks = s.N * s.C * p.tiles_y * p.tiles_x;
  if (blocks == 0) return cudaSuccess;
  if (cudaError_t e = prepare_dynamic_smem(dw_mix_backward_kernel<T>, p.smem_bytes); e != cudaSuccess) return e;
  EIMN_LAUNCH(dw_mix_backward_kernel<T>, static_cast<unsigned int>(blocks), p.threads, p.smem_bytes, st)(
      s, p.tile_w, p.tile_h, p.tiles_x, p.tiles_y, p.partials, cp<T>(gy), cp<T>(q), cp<T>(w0), cp<T>(b0), cp<T>(w1),
      cp<T>(w2), mp<T>(gq), mp<A>(ws0), mp<A>(ws1), mp<A>(ws2));
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t c3 = s.C - s.c1 - s.c2;
  e = reduce_partials<T>(ws0, s.C, p.partials, s.K0 * s.K0 + 1, gw0, gb0, st);
  if (e != cudaSuccess) return e;
  e = reduce_partials<T>(ws1, s.c1, p.partials, s.K1 * s.K1 + 1, gw1, gb1, st);
  if (e != cudaSuccess) return e;
  return reduce_partials<T>(ws2, c3, p.partials, s.K2 * s.K2 + 1, gw2, gb2, st);
}

// Calls f.template operator()<T>() with T the element type of dt.
template <typename F> cudaError_t dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
#ifndef EIMN_CUDA_EMU
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
#endif
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

DwMixPlan dw_mix_plan(const DwMixShape& s, DType dt, bool backward, int device) {
  DwMixPlan p;
  int optin = 48 * 1024;  // the limit without opt-in; every CUDA GPU of sm_70+ reports more
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess && v > 0)
    optin = v;
  // Largest tile first; smaller tiles for large halos (or fp64). 256 threads per block in every case.
  static const int kTiles[][2] = {{32, 16}, {32, 8}, {16, 8}, {8, 8}, {8, 4}, {4, 4}};
  for (const auto& t : kTiles) {
    const size_t bytes = dw_mix_smem(s, t[0], t[1], backward, acc_size(dt));
    if (bytes <= static_cast<size_t>(optin)) {
      p.tile_w = t[0];
      p.tile_h = t[1];
      p.smem_bytes = bytes;
      p.ok = true;
      break;
    }
  }
  if (!p.ok) {
    p.why = "the dilated kernels' halo (d*(K-1)/2 of the region conv plus that of the channel conv) is too large "
            "for a shared-memory tile on this GPU";
    return p;
  }
  p.tiles_x = (s.W + p.tile_w - 1) / p.tile_w;
  p.tiles_y = (s.H + p.tile_h - 1) / p.tile_h;
  p.partials = s.N * p.tiles_x * p.tiles_y;
  if (s.N * s.C * p.tiles_x * p.tiles_y > int64_t(0x7fffffff)) {
    p.ok = false;
    p.why = "the input is too large: N*C*ceil(H/tile_h)*ceil(W/tile_w) exceeds the CUDA grid limit";
  }
  return p;
}

cudaError_t dw_mix_forward(const DwMixShape& s, const DwMixPlan& p, DType dt, const void* q, const void* w0,
                           const void* b0, const void* w1, const void* b1, const void* w2, const void* b2, void* y,
                           cudaStream_t stream) {
  if (!p.ok) return cudaErrorInvalidConfiguration;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    return dw_mix_forward_t<T>(s, p, q, w0, b0, w1, b1, w2, b2, y, stream);
  });
}

cudaError_t dw_mix_backward(const DwMixShape& s, const DwMixPlan& p, DType dt, const void* gy, const void* q,
                            const void* w0, const void* b0, const void* w1, const void* w2, void* gq, void* gw0,
                            void* gb0, void* gw1, void* gb1, void* gw2, void* gb2, void* ws0, void* ws1, void* ws2,
                            cudaStream_t stream) {
  if (!p.ok) return cudaErrorInvalidConfiguration;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    return dw_mix_backward_t<T>(s, p, gy, q, w0, b0, w1, w2, gq, gw0, gb0, gw1, gb1, gw2, gb2, ws0, ws1, ws2,
                                stream);
  });
}

cudaError_t proj_qv_epilogue_forward(DType dt, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* t,
                                     const void* bq, const void* bv, void* q, void* v, cudaStream_t stream) {
  const int64_t total = N * (Cq + Cv) * HW;
  if (total == 0) return cudaSuccess;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    EIMN_LAUNCH(proj_qv_fwd_kernel<T>, grid_for(total), kThreads, 0, stream)(
        N, Cq, Cv, HW, static_cast<const acc_t<T>*>(t), cp<T>(bq), cp<T>(bv), mp<T>(q), mp<T>(v));
    return cudaGetLastError();
  });
}

cudaError_t proj_qv_epilogue_backward(DType dt, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* tq,
                                      const void* bq, const void* gq, const void* gv, void* G, cudaStream_t stream) {
  const int64_t total = N * (Cq + Cv) * HW;
  if (total == 0) return cudaSuccess;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    EIMN_LAUNCH(proj_qv_bwd_kernel<T>, grid_for(total), kThreads, 0, stream)(
        N, Cq, Cv, HW, static_cast<const acc_t<T>*>(tq), cp<T>(bq), cp<T>(gq), cp<T>(gv), mp<T>(G));
    return cudaGetLastError();
  });
}

cudaError_t gate_out_epilogue_gate(DType dt, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                                   const void* v, void* s, cudaStream_t stream) {
  const int64_t total = N * C * HW;
  if (total == 0) return cudaSuccess;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    EIMN_LAUNCH(gate_fwd_kernel<T>, grid_for(total), kThreads, 0, stream)(
        N, C, HW, static_cast<const acc_t<T>*>(f), cp<T>(bf), cp<T>(v), mp<T>(s));
    return cudaGetLastError();
  });
}

cudaError_t bias_epilogue(DType dt, int64_t N, int64_t C, int64_t HW, const void* t, const void* b, void* out,
                          cudaStream_t stream) {
  const int64_t total = N * C * HW;
  if (total == 0) return cudaSuccess;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    EIMN_LAUNCH(bias_kernel<T>, grid_for(total), kThreads, 0, stream)(N, C, HW, static_cast<const acc_t<T>*>(t),
                                                                         cp<T>(b), mp<T>(out));
    return cudaGetLastError();
  });
}

cudaError_t gate_out_epilogue_backward(DType dt, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                                       const void* v, const void* gs, void* s, void* gv, void* gf,
                                       cudaStream_t stream) {
  const int64_t total = N * C * HW;
  if (total == 0) return cudaSuccess;
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    EIMN_LAUNCH(gate_bwd_kernel<T>, grid_for(total), kThreads, 0, stream)(
        N, C, HW, static_cast<const acc_t<T>*>(f), cp<T>(bf), cp<T>(v), static_cast<const acc_t<T>*>(gs), mp<T>(s),
        mp<T>(gv), mp<T>(gf));
    return cudaGetLastError();
  });
}

}  // namespace eimn::cuda::molrcm
