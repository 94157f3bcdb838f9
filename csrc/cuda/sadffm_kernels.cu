// SADFFM CUDA kernels (torch-free): gated_dwconv and dffm_out, forward and backward. Launchers: sadffm_kernels.cuh.
//
// Where cuBLAS is used and where custom kernels run:
// * cuBLAS (through at::matmul in csrc/cuda/sadffm_cuda.cpp): the three 1x1 convolutions W_in x, W_out h and their
//   gradients (grad_x = W_in^T grad_t, grad_W_in = sum_n grad_t x^T, grad_h = W_out^T grad_y, grad_W_out = ...).
//   The GEMMs are written without bias; the kernels below add b_in / b_out when they read the GEMM result.
// * Custom kernels (this file): everything else.
//   - gated_dwconv: one kernel per direction. Forward: KxK depthwise of channels j and j+hid from a shared-memory tile
//     (+ halo), then GELU(x1)*x2; the post-depthwise tensor is never written. Backward: the same tile with a 2r halo,
//     recomputes u = DW(t), forms grad_u in shared memory (tile + r halo), writes grad_t and per-block partials of the
//     depthwise weight/bias and b_in gradients.
//   - dffm_out: per-pixel kernels over 1-D pixel tiles of one image (LayerNorm over C channels, local reduce, gates),
//     per-image tiny kernels for the global-mean branch (g, c), and fixed-order reductions of per-block partials.
// Determinism: no atomics. Block partials are formed by warp shuffles (fixed tree) + a fixed-order sum over warps,
// then summed over blocks in a fixed order by sadffm_reduce_partials_kernel.
#include "sadffm_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_smem.cuh"
#include "eimn_math.h"

namespace eimn {
namespace sadffm {
namespace {

// ---------------------------------------------------------------- scalar loads / stores in the accumulation type
template <typename T> struct Io;
template <> struct Io<float> {
  static __device__ __forceinline__ float ld(const float* p) { return *p; }
  static __device__ __forceinline__ void st(float* p, float v) { *p = v; }
};
template <> struct Io<double> {
  static __device__ __forceinline__ double ld(const double* p) { return *p; }
  static __device__ __forceinline__ void st(double* p, double v) { *p = v; }
};
template <> struct Io<__half> {
  static __device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
};
template <> struct Io<__nv_bfloat16> {
  static __device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};
template <typename T> __device__ __forceinline__ acc_t<T> ld(const T* p) { return Io<T>::ld(p); }

// Sum over the 32 lanes of a warp (fixed shuffle tree, deterministic); the result is valid in lane 0.
// Must be called by all 32 lanes (every call site below is in warp-uniform control flow).
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Dynamic shared memory, reinterpreted per kernel (a byte array avoids the extern-template-type clash).
extern __shared__ __align__(16) unsigned char sadffm_smem[];

// ---------------------------------------------------------------- fixed-order reduction of block partials
// part: (outer, B, O) -> out: (outer, O), out[i, o] = sum_b part[i, b, o]. Block (kRedX, kRedY): threadIdx.x picks the
// output, threadIdx.y strides over b; the kRedY strided sums are added in a fixed order. Deterministic.
constexpr int kRedX = 32, kRedY = 32;
template <typename A>
__global__ void __launch_bounds__(kRedX* kRedY)
    sadffm_reduce_partials_kernel(const A* __restrict__ part, A* __restrict__ out, int64_t outer, int64_t B,
                                  int64_t O) {
  __shared__ A sm[kRedY][kRedX + 1];
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kRedX + threadIdx.x;
  const bool ok = m < outer * O;
  const int64_t i = ok ? m / O : 0, o = ok ? m % O : 0;
  A s = A(0);
  if (ok)
    for (int64_t b = threadIdx.y; b < B; b += kRedY) s += part[(i * B + b) * O + o];
  sm[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && ok) {
    A t = A(0);
#pragma unroll
    for (int y = 0; y < kRedY; ++y) t += sm[y][threadIdx.x];
    out[m] = t;
  }
}

template <typename A>
cudaError_t sadffm_reduce_partials(const A* part, A* out, int64_t outer, int64_t B, int64_t O, cudaStream_t stream) {
  const int64_t M = outer * O;
  if (M == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((M + kRedX - 1) / kRedX);
  sadffm_reduce_partials_kernel<A><<<grid, dim3(kRedX, kRedY), 0, stream>>>(part, out, outer, B, O);
  return cudaGetLastError();
}

// ================================================================================================ gated_dwconv
// Output tile of one block: kGTH x kGTW pixels of one image n and one channel pair (j, j + hid).
constexpr int kGTH = 16, kGTW = 32, kGThreads = 256;

// Adds the K x K depthwise window at (ly, lx) of two shared-memory tiles (row stride S; row ly + ky, column
// lx + kx) to u1 and u2, with the K x K weights w1, w2 (the two halves of a channel pair).
template <typename A>
__device__ __forceinline__ void dw_window_pair(const A* s1, const A* s2, const A* w1, const A* w2, int K, int S,
                                               int ly, int lx, A& u1, A& u2) {
  for (int ky = 0; ky < K; ++ky) {
    const A* r1 = s1 + (ly + ky) * S + lx;
    const A* r2 = s2 + (ly + ky) * S + lx;
    const A* k1 = w1 + ky * K;
    const A* k2 = w2 + ky * K;
    for (int kx = 0; kx < K; ++kx) {
      u1 += k1[kx] * r1[kx];
      u2 += k2[kx] * r2[kx];
    }
  }
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// grid (tiles_y * tiles_x, hid, N), block kGThreads.
// smem (acc): s1, s2: (kGTH + 2r) x (kGTW + 2r) tiles of t + b_in (zero outside the image); w1, w2: K*K.
template <typename T>
__global__ void __launch_bounds__(kGThreads)
    sadffm_gated_fwd_kernel(const T* __restrict__ tg, const T* __restrict__ b_in, const T* __restrict__ w_dw,
                            const T* __restrict__ b_dw, T* __restrict__ h, int hid, int H, int W, int K,
                            int tiles_x) {
  using A = acc_t<T>;
  const int r = K / 2, KK = K * K;
  const int SW = kGTW + 2 * r, SH = kGTH + 2 * r, SN = SH * SW;
  A* s1 = reinterpret_cast<A*>(sadffm_smem);
  A* s2 = s1 + SN;
  A* w1 = s2 + SN;
  A* w2 = w1 + KK;
  const int j = blockIdx.y, n = blockIdx.z;
  const int oy = (blockIdx.x / tiles_x) * kGTH, ox = (blockIdx.x % tiles_x) * kGTW;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const T* t1 = tg + (static_cast<int64_t>(n) * 2 * hid + j) * HW;
  const T* t2 = t1 + static_cast<int64_t>(hid) * HW;
  const A bi1 = ld(b_in + j), bi2 = ld(b_in + j + hid);
  for (int i = threadIdx.x; i < SN; i += blockDim.x) {
    const int gy = oy - r + i / SW, gx = ox - r + i % SW;
    const bool in = gy >= 0 && gy < H && gx >= 0 && gx < W;
    const int64_t off = static_cast<int64_t>(gy) * W + gx;
    s1[i] = in ? ld(t1 + off) + bi1 : A(0);
    s2[i] = in ? ld(t2 + off) + bi2 : A(0);
  }
  for (int i = threadIdx.x; i < KK; i += blockDim.x) {
    w1[i] = ld(w_dw + static_cast<int64_t>(j) * KK + i);
    w2[i] = ld(w_dw + static_cast<int64_t>(j + hid) * KK + i);
  }
  __syncthreads();
  const A bd1 = ld(b_dw + j), bd2 = ld(b_dw + j + hid);
  T* hp = h + (static_cast<int64_t>(n) * hid + j) * HW;
  for (int pix = threadIdx.x; pix < kGTH * kGTW; pix += blockDim.x) {
    const int ly = pix / kGTW, lx = pix % kGTW;
    const int gy = oy + ly, gx = ox + lx;
    if (gy >= H || gx >= W) continue;
    A u1 = bd1, u2 = bd2;
    dw_window_pair(s1, s2, w1, w2, K, SW, ly, lx, u1, u2);  // tile row ly + ky = global row gy + ky - r
    Io<T>::st(hp + static_cast<int64_t>(gy) * W + gx, gelu(u1) * u2);
  }
}

template <typename T> size_t gated_fwd_smem(int K) {
  const int r = K / 2;
  return sizeof(acc_t<T>) * (2 * static_cast<size_t>(kGTH + 2 * r) * (kGTW + 2 * r) + 2 * static_cast<size_t>(K) * K);
}

// Backward. grid (tiles, hid, N), block kGThreads. With r = K/2, oy/ox the tile origin:
//   a1, a2: t + b_in on rows oy-2r .. oy+kGTH+2r-1 (cols likewise), zero outside the image;
//   g1, g2: grad_u = dL/du on rows oy-r .. oy+kGTH+r-1 (zero outside the image);
//   wpart: per-warp partials of 2 * (K*K + 2) slots: per channel [dW (K*K), db_dw, db_in].
// Each pixel is owned by exactly one tile, so partials over owned pixels sum to the full reduction.
// part layout: (2*hid, N*tiles, K*K + 2), channel index j (first half) or j + hid (second half).
template <typename T>
__global__ void __launch_bounds__(kGThreads)
    sadffm_gated_bwd_kernel(const T* __restrict__ grad_h, const T* __restrict__ tg, const T* __restrict__ b_in,
                            const T* __restrict__ w_dw, const T* __restrict__ b_dw, acc_t<T>* __restrict__ grad_t,
                            acc_t<T>* __restrict__ part, int N, int hid, int H, int W, int K, int tiles_x,
                            int tiles) {
  using A = acc_t<T>;
  const int r = K / 2, KK = K * K, O = KK + 2;
  const int TW = kGTW + 4 * r, TN = (kGTH + 4 * r) * TW;
  const int GW = kGTW + 2 * r, GN = (kGTH + 2 * r) * GW;
  const int nw = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  A* a1 = reinterpret_cast<A*>(sadffm_smem);
  A* a2 = a1 + TN;
  A* g1 = a2 + TN;
  A* g2 = g1 + GN;
  A* w1 = g2 + GN;
  A* w2 = w1 + KK;
  A* wpart = w2 + KK;  // [2 * O][nw]
  const int j = blockIdx.y, n = blockIdx.z;
  const int oy = (blockIdx.x / tiles_x) * kGTH, ox = (blockIdx.x % tiles_x) * kGTW;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t c1off = (static_cast<int64_t>(n) * 2 * hid + j) * HW;
  const int64_t c2off = c1off + static_cast<int64_t>(hid) * HW;
  const A bi1 = ld(b_in + j), bi2 = ld(b_in + j + hid);
  for (int i = threadIdx.x; i < TN; i += blockDim.x) {
    const int gy = oy - 2 * r + i / TW, gx = ox - 2 * r + i % TW;
    const bool in = gy >= 0 && gy < H && gx >= 0 && gx < W;
    const int64_t off = static_cast<int64_t>(gy) * W + gx;
    a1[i] = in ? ld(tg + c1off + off) + bi1 : A(0);
    a2[i] = in ? ld(tg + c2off + off) + bi2 : A(0);
  }
  for (int i = threadIdx.x; i < KK; i += blockDim.x) {
    w1[i] = ld(w_dw + static_cast<int64_t>(j) * KK + i);
    w2[i] = ld(w_dw + static_cast<int64_t>(j + hid) * KK + i);
  }
  __syncthreads();
  // grad_u on the tile + r halo: u = DW(t) + b_dw, h = GELU(u1) * u2.
  const A bd1 = ld(b_dw + j), bd2 = ld(b_dw + j + hid);
  const T* ghp = grad_h + (static_cast<int64_t>(n) * hid + j) * HW;
  for (int i = threadIdx.x; i < GN; i += blockDim.x) {
    const int ly = i / GW, lx = i % GW;
    const int gy = oy - r + ly, gx = ox - r + lx;
    A v1 = A(0), v2 = A(0);
    if (gy >= 0 && gy < H && gx >= 0 && gx < W) {
      A u1 = bd1, u2 = bd2;
      dw_window_pair(a1, a2, w1, w2, K, TW, ly, lx, u1, u2);  // tile row ly + ky = global row gy + ky - r
      const A gh = ld(ghp + static_cast<int64_t>(gy) * W + gx);
      v1 = gh * u2 * gelu_grad(u1);
      v2 = gh * gelu(u1);
    }
    g1[i] = v1;
    g2[i] = v2;
  }
  __syncthreads();
  // grad_t on owned pixels: dt[q] = sum_k w[k] * grad_u[q - (k - r)] (transposed correlation).
  A sb1 = A(0), sb2 = A(0), si1 = A(0), si2 = A(0);
  for (int pix = threadIdx.x; pix < kGTH * kGTW; pix += blockDim.x) {
    const int ly = pix / kGTW, lx = pix % kGTW;
    const int gy = oy + ly, gx = ox + lx;
    if (gy >= H || gx >= W) continue;
    const int ctr = (ly + r) * GW + (lx + r);
    sb1 += g1[ctr];
    sb2 += g2[ctr];
    A d1 = A(0), d2 = A(0);
    for (int ky = 0; ky < K; ++ky) {
      const int row = (ly + 2 * r - ky) * GW + (lx + 2 * r);  // global row gy - ky + r
      const A* k1 = w1 + ky * K;
      const A* k2 = w2 + ky * K;
      for (int kx = 0; kx < K; ++kx) {
        d1 += k1[kx] * g1[row - kx];
        d2 += k2[kx] * g2[row - kx];
      }
    }
    const int64_t off = static_cast<int64_t>(gy) * W + gx;
    grad_t[c1off + off] = d1;
    grad_t[c2off + off] = d2;
    si1 += d1;
    si2 += d2;
  }
  // All threads run the same number of pixel iterations above, so every warp reaches these shuffles.
  {
    const A v[4] = {warp_sum(sb1), warp_sum(si1), warp_sum(sb2), warp_sum(si2)};
    if (lane == 0) {
      wpart[(0 * O + KK) * nw + warp] = v[0];
      wpart[(0 * O + KK + 1) * nw + warp] = v[1];
      wpart[(1 * O + KK) * nw + warp] = v[2];
      wpart[(1 * O + KK + 1) * nw + warp] = v[3];
    }
  }
  // dW[k] = sum_p grad_u[p] * t[p + k - r] over owned pixels (grad_u is zero outside the image).
  for (int k = 0; k < KK; ++k) {
    const int ky = k / K, kx = k % K;
    A p1 = A(0), p2 = A(0);
    for (int pix = threadIdx.x; pix < kGTH * kGTW; pix += blockDim.x) {
      const int ly = pix / kGTW, lx = pix % kGTW;
      const int gi = (ly + r) * GW + (lx + r);
      const int ti = (ly + ky + r) * TW + (lx + kx + r);  // global (gy + ky - r, gx + kx - r)
      p1 += g1[gi] * a1[ti];
      p2 += g2[gi] * a2[ti];
    }
    p1 = warp_sum(p1);
    p2 = warp_sum(p2);
    if (lane == 0) {
      wpart[(0 * O + k) * nw + warp] = p1;
      wpart[(1 * O + k) * nw + warp] = p2;
    }
  }
  __syncthreads();
  const int64_t B = static_cast<int64_t>(N) * tiles, b = static_cast<int64_t>(n) * tiles + blockIdx.x;
  for (int s = threadIdx.x; s < 2 * O; s += blockDim.x) {
    A acc = A(0);
    for (int w = 0; w < nw; ++w) acc += wpart[s * nw + w];
    const int ch = s / O, k = s % O;
    const int64_t c = ch == 0 ? j : j + hid;
    part[(c * B + b) * O + k] = acc;
  }
}

template <typename T> size_t gated_bwd_smem(int K) {
  const int r = K / 2;
  const size_t TN = static_cast<size_t>(kGTH + 4 * r) * (kGTW + 4 * r);
  const size_t GN = static_cast<size_t>(kGTH + 2 * r) * (kGTW + 2 * r);
  const size_t KK = static_cast<size_t>(K) * K;
  return sizeof(acc_t<T>) * (2 * TN + 2 * GN + 2 * KK + 2 * (KK + 2) * (kGThreads / 32));
}

template <typename T>
cudaError_t gated_forward_impl(const void* tg, const void* b_in, const void* w_dw, const void* b_dw, void* h, int N,
                               int hid, int H, int W, int K, cudaStream_t stream) {
  if (N == 0 || hid == 0 || H == 0 || W == 0) return cudaSuccess;
  if (K < 1 || K % 2 == 0 || hid > 65535 || N > 65535) return cudaErrorInvalidValue;
  const int tiles_x = ceil_div(W, kGTW), tiles = ceil_div(H, kGTH) * tiles_x;
  const size_t smem = gated_fwd_smem<T>(K);
  cudaError_t e = prepare_dynamic_smem(sadffm_gated_fwd_kernel<T>, smem);
  if (e != cudaSuccess) return e;
  sadffm_gated_fwd_kernel<T><<<dim3(tiles, hid, N), kGThreads, smem, stream>>>(
      static_cast<const T*>(tg), static_cast<const T*>(b_in), static_cast<const T*>(w_dw),
      static_cast<const T*>(b_dw), static_cast<T*>(h), hid, H, W, K, tiles_x);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gated_backward_impl(const void* grad_h, const void* tg, const void* b_in, const void* w_dw,
                                const void* b_dw, void* grad_t, void* grad_small, void* workspace, int N, int hid,
                                int H, int W, int K, cudaStream_t stream) {
  using A = acc_t<T>;
  if (hid == 0) return cudaSuccess;
  if (K < 1 || K % 2 == 0 || hid > 65535 || N > 65535) return cudaErrorInvalidValue;
  const int64_t O = static_cast<int64_t>(K) * K + 2;
  if (N == 0 || H == 0 || W == 0) {  // no pixels: all small gradients are zero
    return cudaMemsetAsync(grad_small, 0, sizeof(A) * 2 * hid * O, stream);
  }
  const int tiles_x = ceil_div(W, kGTW), tiles = ceil_div(H, kGTH) * tiles_x;
  const size_t smem = gated_bwd_smem<T>(K);
  cudaError_t e = prepare_dynamic_smem(sadffm_gated_bwd_kernel<T>, smem);
  if (e != cudaSuccess) return e;
  A* part = static_cast<A*>(workspace);
  sadffm_gated_bwd_kernel<T><<<dim3(tiles, hid, N), kGThreads, smem, stream>>>(
      static_cast<const T*>(grad_h), static_cast<const T*>(tg), static_cast<const T*>(b_in),
      static_cast<const T*>(w_dw), static_cast<const T*>(b_dw), static_cast<A*>(grad_t), part, N, hid, H, W, K,
      tiles_x, tiles);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return sadffm_reduce_partials<A>(part, static_cast<A*>(grad_small), 2 * static_cast<int64_t>(hid),
                                   static_cast<int64_t>(N) * tiles, O, stream);
}

// ================================================================================================ dffm_out
// Pixel kernels: one thread per pixel p of image n = blockIdx.y, tile = blockIdx.x covers pixels
// [tile * blockDim, (tile + 1) * blockDim). Threads past HW take part in the warp reductions with zeros.
constexpr int kDStatThreads = 128;  // stats (forward pass 1) and pass B
constexpr int kDGradThreads = 64;   // pass C (large per-block partial buffer)
constexpr int kDTinyThreads = 256;

template <typename T> struct DW {  // typed view of SadffmDffmWeights
  const T *b_out, *ln_w, *ln_b, *w_gr, *b_gr, *w_lr, *b_lr, *w_ce, *b_ce, *w_se, *b_se;
};
template <typename T> DW<T> typed(const SadffmDffmWeights& w) {
  return DW<T>{static_cast<const T*>(w.b_out), static_cast<const T*>(w.ln_w), static_cast<const T*>(w.ln_b),
               static_cast<const T*>(w.w_gr),  static_cast<const T*>(w.b_gr), static_cast<const T*>(w.w_lr),
               static_cast<const T*>(w.b_lr),  static_cast<const T*>(w.w_ce), static_cast<const T*>(w.b_ce),
               static_cast<const T*>(w.w_se),  static_cast<const T*>(w.b_se)};
}

// Per-pixel channel mean and 1/sqrt(biased var + eps) of y = yg + b_out (two passes over the channels).
template <typename T>
__device__ __forceinline__ void pixel_moments(const T* yp, int64_t HW, int C, const T* b_out, bool valid,
                                              acc_t<T> eps, acc_t<T>& mu, acc_t<T>& rstd) {
  using A = acc_t<T>;
  A m = A(0), v = A(0);
  if (valid) {
    for (int c = 0; c < C; ++c) m += ld(yp + c * HW) + ld(b_out + c);
    m /= A(C);
    for (int c = 0; c < C; ++c) {
      const A d = ld(yp + c * HW) + ld(b_out + c) - m;
      v += d * d;
    }
    v /= A(C);
  }
  mu = m;
  rstd = A(1) / sqrt(v + eps);
}

// Forward pass 1 (also re-run by the backward). grid (tiles, N), block kDStatThreads.
// Writes a[n, p] = sum_r w_se[r] * GELU(W_lr z + b_lr)_r (the local part of the spatial gate's logit) and
// zpart[n, tile, c] = sum over the tile's pixels of z[c]. smem (acc): wlr (R*C), L (R*blockDim), wp (C*nw).
template <typename T>
__global__ void __launch_bounds__(kDStatThreads)
    sadffm_dffm_stats_kernel(const T* __restrict__ yg, DW<T> wt, acc_t<T> eps, acc_t<T>* __restrict__ a_out,
                             acc_t<T>* __restrict__ zpart, int C, int R, int64_t HW, int tiles) {
  using A = acc_t<T>;
  const int P = blockDim.x, tid = threadIdx.x, nw = P / 32, warp = tid / 32, lane = tid % 32;
  A* wlr = reinterpret_cast<A*>(sadffm_smem);
  A* L = wlr + R * C;
  A* wp = L + R * P;
  const int n = blockIdx.y, tile = blockIdx.x;
  const int64_t p = static_cast<int64_t>(tile) * P + tid;
  const bool valid = p < HW;
  for (int i = tid; i < R * C; i += P) wlr[i] = ld(wt.w_lr + i);
  for (int q = 0; q < R; ++q) L[q * P + tid] = ld(wt.b_lr + q);  // thread-private column
  __syncthreads();
  const T* yp = yg + static_cast<int64_t>(n) * C * HW + (valid ? p : 0);
  A mu, rstd;
  pixel_moments(yp, HW, C, wt.b_out, valid, eps, mu, rstd);
  for (int c = 0; c < C; ++c) {
    A z = A(0);
    if (valid) z = (ld(yp + c * HW) + ld(wt.b_out + c) - mu) * rstd * ld(wt.ln_w + c) + ld(wt.ln_b + c);
    for (int q = 0; q < R; ++q) L[q * P + tid] += wlr[q * C + c] * z;
    const A zs = warp_sum(z);
    if (lane == 0) wp[c * nw + warp] = zs;
  }
  A a = A(0);
  for (int q = 0; q < R; ++q) a += ld(wt.w_se + q) * gelu(L[q * P + tid]);
  if (valid) a_out[static_cast<int64_t>(n) * HW + p] = a;
  __syncthreads();
  for (int c = tid; c < C; c += P) {
    A s = A(0);
    for (int w = 0; w < nw; ++w) s += wp[c * nw + w];
    zpart[(static_cast<int64_t>(n) * tiles + tile) * C + c] = s;
  }
}

// Per-image global branch. grid N, block kDTinyThreads. zsum: (N, C) sum of z over the image.
// Writes zmean (N, C), gpre (N, R) = W_gr zmean + b_gr, g = GELU(gpre), cvec (N, C) = sigmoid(W_ce g + b_ce),
// sg (N) = w_se[R:] . g + b_se.
template <typename T>
__global__ void __launch_bounds__(kDTinyThreads)
    sadffm_dffm_global_kernel(DW<T> wt, const acc_t<T>* __restrict__ zsum, acc_t<T>* __restrict__ zmean,
                              acc_t<T>* __restrict__ gpre, acc_t<T>* __restrict__ g, acc_t<T>* __restrict__ cvec,
                              acc_t<T>* __restrict__ sg, int C, int R, int64_t HW) {
  using A = acc_t<T>;
  const int n = blockIdx.x;
  for (int c = threadIdx.x; c < C; c += blockDim.x) zmean[n * C + c] = zsum[n * C + c] / A(HW);
  __syncthreads();
  for (int q = threadIdx.x; q < R; q += blockDim.x) {
    A s = ld(wt.b_gr + q);
    for (int c = 0; c < C; ++c) s += ld(wt.w_gr + q * C + c) * zmean[n * C + c];
    gpre[n * R + q] = s;
    g[n * R + q] = gelu(s);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    A s = ld(wt.b_ce + c);
    for (int q = 0; q < R; ++q) s += ld(wt.w_ce + c * R + q) * g[n * R + q];
    cvec[n * C + c] = sigmoid(s);
  }
  if (threadIdx.x == 0) {
    A s = ld(wt.b_se);
    for (int q = 0; q < R; ++q) s += ld(wt.w_se + R + q) * g[n * R + q];
    sg[n] = s;
  }
}

// Forward pass 2: out = y * c * s, s = sigmoid(a + sg). Grid-stride over N*C*HW.
template <typename T>
__global__ void sadffm_dffm_apply_kernel(const T* __restrict__ yg, const T* __restrict__ b_out,
                                         const acc_t<T>* __restrict__ a, const acc_t<T>* __restrict__ cvec,
                                         const acc_t<T>* __restrict__ sg, T* __restrict__ out, int C, int64_t HW,
                                         int64_t total) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t nc = i / HW, p = i % HW, n = nc / C;
    const int c = static_cast<int>(nc % C);
    const acc_t<T> y = ld(yg + i) + ld(b_out + c);
    Io<T>::st(out + i, y * cvec[nc] * sigmoid(a[n * HW + p] + sg[n]));
  }
}

// Backward pass B. grid (tiles, N), block kDStatThreads. dS = d out / d(logit of s) per pixel -> dSg (N, HW);
// partials pb (N, tiles, C + 1): slot c = sum_p go*y*s (-> dL/dc), slot C = sum_p dS.
template <typename T>
__global__ void __launch_bounds__(kDStatThreads)
    sadffm_dffm_gate_grad_kernel(const T* __restrict__ go, const T* __restrict__ yg, const T* __restrict__ b_out,
                                 const acc_t<T>* __restrict__ a, const acc_t<T>* __restrict__ cvec,
                                 const acc_t<T>* __restrict__ sg, acc_t<T>* __restrict__ dSg,
                                 acc_t<T>* __restrict__ pb, int C, int64_t HW, int tiles) {
  using A = acc_t<T>;
  const int P = blockDim.x, tid = threadIdx.x, nw = P / 32, warp = tid / 32, lane = tid % 32;
  A* wp = reinterpret_cast<A*>(sadffm_smem);  // [(C + 1) * nw]
  const int n = blockIdx.y, tile = blockIdx.x;
  const int64_t p = static_cast<int64_t>(tile) * P + tid;
  const bool valid = p < HW;
  const int64_t base = static_cast<int64_t>(n) * C * HW + (valid ? p : 0);
  const A s = valid ? sigmoid(a[n * HW + p] + sg[n]) : A(0);
  A ds = A(0);
  for (int c = 0; c < C; ++c) {
    A gy = A(0);
    if (valid) gy = ld(go + base + c * HW) * (ld(yg + base + c * HW) + ld(b_out + c));
    ds += gy * cvec[n * C + c];
    const A v = warp_sum(gy * s);
    if (lane == 0) wp[c * nw + warp] = v;
  }
  const A dS = ds * s * (A(1) - s);  // zero when !valid
  {
    const A v = warp_sum(dS);
    if (lane == 0) wp[C * nw + warp] = v;
  }
  if (valid) dSg[n * HW + p] = dS;
  __syncthreads();
  for (int c = tid; c <= C; c += P) {
    A acc = A(0);
    for (int w = 0; w < nw; ++w) acc += wp[c * nw + w];
    pb[(static_cast<int64_t>(n) * tiles + tile) * (C + 1) + c] = acc;
  }
}

// Backward of the per-image global branch: a single block, images in order (deterministic).
// dcs: (N, C + 1) from pass B. Writes dC (N, C) = dL/d(logit c), dG (N, R) = dL/d gpre, dzm (N, C) = dL/dzmean / HW
// (the per-image constant added to dL/dz at every pixel), and the packed gradients of w_se[R:], w_gr, b_gr, w_ce,
// b_ce into grad_small.
template <typename T>
__global__ void __launch_bounds__(kDTinyThreads)
    sadffm_dffm_global_grad_kernel(DW<T> wt, const acc_t<T>* __restrict__ dcs, const acc_t<T>* __restrict__ zmean,
                                   const acc_t<T>* __restrict__ gpre, const acc_t<T>* __restrict__ g,
                                   const acc_t<T>* __restrict__ cvec, acc_t<T>* __restrict__ dC,
                                   acc_t<T>* __restrict__ dG, acc_t<T>* __restrict__ dzm,
                                   acc_t<T>* __restrict__ grad_small, int N, int C, int R, int64_t HW) {
  using A = acc_t<T>;
  const SadffmDffmGradLayout lay{C, R};
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int n = 0; n < N; ++n) {
    for (int c = tid; c < C; c += nt) {
      const A cv = cvec[n * C + c];
      dC[n * C + c] = dcs[n * (C + 1) + c] * cv * (A(1) - cv);
    }
    __syncthreads();
    const A sdS = dcs[n * (C + 1) + C];
    for (int q = tid; q < R; q += nt) {
      A dg = ld(wt.w_se + R + q) * sdS;
      for (int c = 0; c < C; ++c) dg += ld(wt.w_ce + c * R + q) * dC[n * C + c];
      dG[n * R + q] = dg * gelu_grad(gpre[n * R + q]);
    }
    __syncthreads();
    for (int c = tid; c < C; c += nt) {
      A s = A(0);
      for (int q = 0; q < R; ++q) s += ld(wt.w_gr + q * C + c) * dG[n * R + q];
      dzm[n * C + c] = s / A(HW);
    }
    __syncthreads();
  }
  for (int q = tid; q < R; q += nt) {
    A sw = A(0), sb = A(0);
    for (int n = 0; n < N; ++n) {
      sw += g[n * R + q] * dcs[n * (C + 1) + C];
      sb += dG[n * R + q];
    }
    grad_small[lay.w_se_global() + q] = sw;
    grad_small[lay.b_gr() + q] = sb;
  }
  for (int e = tid; e < R * C; e += nt) {
    const int q = e / C, c = e % C;
    A s = A(0);
    for (int n = 0; n < N; ++n) s += dG[n * R + q] * zmean[n * C + c];
    grad_small[lay.w_gr() + e] = s;
  }
  for (int e = tid; e < C * R; e += nt) {
    const int c = e / R, q = e % R;
    A s = A(0);
    for (int n = 0; n < N; ++n) s += dC[n * C + c] * g[n * R + q];
    grad_small[lay.w_ce() + e] = s;
  }
  for (int c = tid; c < C; c += nt) {
    A s = A(0);
    for (int n = 0; n < N; ++n) s += dC[n * C + c];
    grad_small[lay.b_ce() + c] = s;
  }
}

// Backward pass C. grid (tiles, N), block kDGradThreads. Per pixel: recompute LayerNorm and the local branch,
// dL/dz = W_lr^T dLpre + dzm (global-mean term), LayerNorm backward, grad_y = go*c*s + dy_LN -> grad_y (N, C, HW).
// Partials pc (N*tiles, passc_slots) in the SadffmDffmGradLayout order.
// smem (acc): wlr (R*C), L (R*blockDim; thread-private column, holds Lpre then dLpre), wp (slots * nw).
template <typename T>
__global__ void __launch_bounds__(kDGradThreads)
    sadffm_dffm_ln_grad_kernel(const T* __restrict__ go, const T* __restrict__ yg, DW<T> wt, acc_t<T> eps,
                               const acc_t<T>* __restrict__ a, const acc_t<T>* __restrict__ cvec,
                               const acc_t<T>* __restrict__ sg, const acc_t<T>* __restrict__ dSg,
                               const acc_t<T>* __restrict__ dzm, acc_t<T>* __restrict__ grad_y,
                               acc_t<T>* __restrict__ pc, int C, int R, int64_t HW, int tiles) {
  using A = acc_t<T>;
  const SadffmDffmGradLayout lay{C, R};
  const int S = static_cast<int>(lay.passc_slots());
  const int P = blockDim.x, tid = threadIdx.x, nw = P / 32, warp = tid / 32, lane = tid % 32;
  A* wlr = reinterpret_cast<A*>(sadffm_smem);
  A* L = wlr + R * C;
  A* wp = L + R * P;
  auto contrib = [&](int64_t slot, A v) {  // warp-uniform: called by every lane
    v = warp_sum(v);
    if (lane == 0) wp[slot * nw + warp] = v;
  };
  const int n = blockIdx.y, tile = blockIdx.x;
  const int64_t p = static_cast<int64_t>(tile) * P + tid;
  const bool valid = p < HW;
  for (int i = tid; i < R * C; i += P) wlr[i] = ld(wt.w_lr + i);
  for (int q = 0; q < R; ++q) L[q * P + tid] = ld(wt.b_lr + q);
  __syncthreads();
  const int64_t base = static_cast<int64_t>(n) * C * HW + (valid ? p : 0);
  const T* yp = yg + base;
  A mu, rstd;
  pixel_moments(yp, HW, C, wt.b_out, valid, eps, mu, rstd);
  auto xhat_of = [&](int c) -> A { return valid ? (ld(yp + c * HW) + ld(wt.b_out + c) - mu) * rstd : A(0); };
  // Lpre = W_lr z + b_lr
  for (int c = 0; c < C; ++c) {
    const A z = valid ? xhat_of(c) * ld(wt.ln_w + c) + ld(wt.ln_b + c) : A(0);
    for (int q = 0; q < R; ++q) L[q * P + tid] += wlr[q * C + c] * z;
  }
  const A dS = valid ? dSg[n * HW + p] : A(0);
  const A s = valid ? sigmoid(a[n * HW + p] + sg[n]) : A(0);
  for (int q = 0; q < R; ++q) {
    const A lp = L[q * P + tid];
    contrib(lay.w_se_local() + q, dS * gelu(lp));
    const A dl = dS * ld(wt.w_se + q) * gelu_grad(lp);
    contrib(lay.b_lr() + q, dl);
    L[q * P + tid] = dl;  // now dLpre
  }
  contrib(lay.b_se(), dS);
  auto dz_of = [&](int c) -> A {
    A dz = dzm[n * C + c];
    for (int q = 0; q < R; ++q) dz += wlr[q * C + c] * L[q * P + tid];
    return valid ? dz : A(0);
  };
  A s1 = A(0), s2 = A(0);
  for (int c = 0; c < C; ++c) {
    const A xh = xhat_of(c);
    const A lw = ld(wt.ln_w + c);
    const A z = valid ? xh * lw + ld(wt.ln_b + c) : A(0);
    const A dz = dz_of(c);
    for (int q = 0; q < R; ++q) contrib(lay.w_lr() + static_cast<int64_t>(q) * C + c, L[q * P + tid] * z);
    contrib(lay.ln_w() + c, dz * xh);
    contrib(lay.ln_b() + c, dz);
    const A dxh = dz * lw;
    s1 += dxh;
    s2 += dxh * xh;
  }
  s1 /= A(C);
  s2 /= A(C);
  for (int c = 0; c < C; ++c) {
    const A xh = xhat_of(c);
    const A dxh = dz_of(c) * ld(wt.ln_w + c);
    A dy = A(0);
    if (valid) {
      dy = ld(go + base + c * HW) * cvec[n * C + c] * s + rstd * (dxh - s1 - xh * s2);
      grad_y[base + c * HW] = dy;
    }
    contrib(lay.b_out() + c, dy);
  }
  __syncthreads();
  const int64_t b = static_cast<int64_t>(n) * tiles + tile;
  for (int k = tid; k < S; k += P) {
    A acc = A(0);
    for (int w = 0; w < nw; ++w) acc += wp[static_cast<int64_t>(k) * nw + w];
    pc[b * S + k] = acc;
  }
}

// Workspace carving (acc elements), shared by the size query and the launchers.
struct DffmWs {
  int64_t a, zpart, zsum, zmean, gpre, g, cvec, sg, end_fwd;   // forward
  int64_t dSg, pb, dcs, dC, dG, dzm, pc, end_bwd;               // backward extra
  int tiles_s, tiles_g;
  DffmWs(int N, int C, int R, int64_t HW) {
    tiles_s = static_cast<int>((HW + kDStatThreads - 1) / kDStatThreads);
    tiles_g = static_cast<int>((HW + kDGradThreads - 1) / kDGradThreads);
    const int64_t S = SadffmDffmGradLayout{C, R}.passc_slots();
    int64_t o = 0;
    a = o;     o += N * HW;
    zpart = o; o += static_cast<int64_t>(N) * tiles_s * C;
    zsum = o;  o += static_cast<int64_t>(N) * C;
    zmean = o; o += static_cast<int64_t>(N) * C;
    gpre = o;  o += static_cast<int64_t>(N) * R;
    g = o;     o += static_cast<int64_t>(N) * R;
    cvec = o;  o += static_cast<int64_t>(N) * C;
    sg = o;    o += N;
    end_fwd = o;
    dSg = o;   o += N * HW;
    pb = o;    o += static_cast<int64_t>(N) * tiles_s * (C + 1);
    dcs = o;   o += static_cast<int64_t>(N) * (C + 1);
    dC = o;    o += static_cast<int64_t>(N) * C;
    dG = o;    o += static_cast<int64_t>(N) * R;
    dzm = o;   o += static_cast<int64_t>(N) * C;
    pc = o;    o += static_cast<int64_t>(N) * tiles_g * S;
    end_bwd = o;
  }
};

template <typename T> size_t stats_smem(int C, int R) {
  return sizeof(acc_t<T>) * (static_cast<size_t>(R) * C + static_cast<size_t>(R) * kDStatThreads +
                             static_cast<size_t>(C) * (kDStatThreads / 32));
}

// Forward pass 1 + per-image global branch (shared by forward and backward).
template <typename T>
cudaError_t dffm_front(const T* yg, const DW<T>& wt, acc_t<T> eps, acc_t<T>* ws, const DffmWs& L, int N, int C,
                       int R, int64_t HW, cudaStream_t stream) {
  using A = acc_t<T>;
  const size_t smem = stats_smem<T>(C, R);
  cudaError_t e = prepare_dynamic_smem(sadffm_dffm_stats_kernel<T>, smem);
  if (e != cudaSuccess) return e;
  sadffm_dffm_stats_kernel<T><<<dim3(L.tiles_s, N), kDStatThreads, smem, stream>>>(
      yg, wt, eps, ws + L.a, ws + L.zpart, C, R, HW, L.tiles_s);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  if ((e = sadffm_reduce_partials<A>(ws + L.zpart, ws + L.zsum, N, L.tiles_s, C, stream)) != cudaSuccess) return e;
  sadffm_dffm_global_kernel<T><<<N, kDTinyThreads, 0, stream>>>(wt, ws + L.zsum, ws + L.zmean, ws + L.gpre,
                                                                 ws + L.g, ws + L.cvec, ws + L.sg, C, R, HW);
  return cudaGetLastError();
}

bool dffm_sizes_ok(int N, int C, int64_t HW) {
  return N <= 65535 && C >= 1 && (HW + kDGradThreads - 1) / kDGradThreads <= 0x7fffffff;
}

template <typename T>
cudaError_t dffm_forward_impl(const void* ygv, const SadffmDffmWeights& w, double eps, void* outv, void* wsv, int N,
                              int C, int R, int64_t HW, cudaStream_t stream) {
  using A = acc_t<T>;
  if (N == 0 || HW == 0) return cudaSuccess;
  if (!dffm_sizes_ok(N, C, HW)) return cudaErrorInvalidValue;
  const T* yg = static_cast<const T*>(ygv);
  const DW<T> wt = typed<T>(w);
  A* ws = static_cast<A*>(wsv);
  const DffmWs L(N, C, R, HW);
  cudaError_t e = dffm_front<T>(yg, wt, static_cast<A>(eps), ws, L, N, C, R, HW, stream);
  if (e != cudaSuccess) return e;
  const int64_t total = static_cast<int64_t>(N) * C * HW;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 * 8 ? blocks : 65536 * 8);
  sadffm_dffm_apply_kernel<T><<<grid, threads, 0, stream>>>(yg, wt.b_out, ws + L.a, ws + L.cvec, ws + L.sg,
                                                            static_cast<T*>(outv), C, HW, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dffm_backward_impl(const void* gov, const void* ygv, const SadffmDffmWeights& w, double eps,
                               void* grad_yv, void* grad_smallv, void* wsv, int N, int C, int R, int64_t HW,
                               cudaStream_t stream) {
  using A = acc_t<T>;
  const SadffmDffmGradLayout lay{C, R};
  if (N == 0 || HW == 0) return cudaMemsetAsync(grad_smallv, 0, sizeof(A) * lay.total(), stream);
  if (!dffm_sizes_ok(N, C, HW)) return cudaErrorInvalidValue;
  const T* go = static_cast<const T*>(gov);
  const T* yg = static_cast<const T*>(ygv);
  const DW<T> wt = typed<T>(w);
  A* ws = static_cast<A*>(wsv);
  A* grad_small = static_cast<A*>(grad_smallv);
  const DffmWs L(N, C, R, HW);
  const A aeps = static_cast<A>(eps);
  cudaError_t e = dffm_front<T>(yg, wt, aeps, ws, L, N, C, R, HW, stream);
  if (e != cudaSuccess) return e;
  // pass B
  const size_t smem_b = sizeof(A) * static_cast<size_t>(C + 1) * (kDStatThreads / 32);
  if ((e = prepare_dynamic_smem(sadffm_dffm_gate_grad_kernel<T>, smem_b)) != cudaSuccess) return e;
  sadffm_dffm_gate_grad_kernel<T><<<dim3(L.tiles_s, N), kDStatThreads, smem_b, stream>>>(
      go, yg, wt.b_out, ws + L.a, ws + L.cvec, ws + L.sg, ws + L.dSg, ws + L.pb, C, HW, L.tiles_s);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  if ((e = sadffm_reduce_partials<A>(ws + L.pb, ws + L.dcs, N, L.tiles_s, C + 1, stream)) != cudaSuccess) return e;
  // global branch backward
  sadffm_dffm_global_grad_kernel<T><<<1, kDTinyThreads, 0, stream>>>(
      wt, ws + L.dcs, ws + L.zmean, ws + L.gpre, ws + L.g, ws + L.cvec, ws + L.dC, ws + L.dG, ws + L.dzm, grad_small,
      N, C, R, HW);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  // pass C
  const int64_t S = lay.passc_slots();
  const size_t smem_c = sizeof(A) * (static_cast<size_t>(R) * C + static_cast<size_t>(R) * kDGradThreads +
                                     static_cast<size_t>(S) * (kDGradThreads / 32));
  if ((e = prepare_dynamic_smem(sadffm_dffm_ln_grad_kernel<T>, smem_c)) != cudaSuccess) return e;
  sadffm_dffm_ln_grad_kernel<T><<<dim3(L.tiles_g, N), kDGradThreads, smem_c, stream>>>(
      go, yg, wt, aeps, ws + L.a, ws + L.cvec, ws + L.sg, ws + L.dSg, ws + L.dzm, static_cast<A*>(grad_yv),
      ws + L.pc, C, R, HW, L.tiles_g);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  return sadffm_reduce_partials<A>(ws + L.pc, grad_small, 1, static_cast<int64_t>(N) * L.tiles_g, S, stream);
}

}  // namespace

// ================================================================================================ public launchers
#define SADFFM_DISPATCH(dt, FN, ...)                                         \
  switch (dt) {                                                             \
    case Dtype::kFloat32: return FN<float>(__VA_ARGS__);                    \
    case Dtype::kFloat64: return FN<double>(__VA_ARGS__);                   \
    case Dtype::kFloat16: return FN<__half>(__VA_ARGS__);                   \
    case Dtype::kBFloat16: return FN<__nv_bfloat16>(__VA_ARGS__);           \
  }                                                                         \
  return cudaErrorInvalidValue

cudaError_t sadffm_gated_dwconv_forward(Dtype dt, const void* tg, const void* b_in, const void* w_dw,
                                        const void* b_dw, void* h, int N, int hid, int H, int W, int K,
                                        cudaStream_t stream) {
  SADFFM_DISPATCH(dt, gated_forward_impl, tg, b_in, w_dw, b_dw, h, N, hid, H, W, K, stream);
}

size_t sadffm_gated_dwconv_workspace_elems(int N, int hid, int H, int W, int K) {
  if (N <= 0 || H <= 0 || W <= 0) return 0;
  const size_t tiles = static_cast<size_t>(ceil_div(W, kGTW)) * ceil_div(H, kGTH);
  return 2 * static_cast<size_t>(hid) * N * tiles * (static_cast<size_t>(K) * K + 2);
}

cudaError_t sadffm_gated_dwconv_backward(Dtype dt, const void* grad_h, const void* tg, const void* b_in,
                                         const void* w_dw, const void* b_dw, void* grad_t, void* grad_small,
                                         void* workspace, int N, int hid, int H, int W, int K,
                                         cudaStream_t stream) {
  SADFFM_DISPATCH(dt, gated_backward_impl, grad_h, tg, b_in, w_dw, b_dw, grad_t, grad_small, workspace, N, hid, H,
                  W, K, stream);
}

size_t sadffm_dffm_out_workspace_elems(int N, int C, int R, int64_t HW, bool backward) {
  if (N <= 0 || HW <= 0) return 0;
  const DffmWs L(N, C, R, HW);
  return static_cast<size_t>(backward ? L.end_bwd : L.end_fwd);
}

cudaError_t sadffm_dffm_out_forward(Dtype dt, const void* yg, const SadffmDffmWeights& wts, double eps, void* out,
                                    void* workspace, int N, int C, int R, int64_t HW, cudaStream_t stream) {
  SADFFM_DISPATCH(dt, dffm_forward_impl, yg, wts, eps, out, workspace, N, C, R, HW, stream);
}

cudaError_t sadffm_dffm_out_backward(Dtype dt, const void* grad_out, const void* yg, const SadffmDffmWeights& wts,
                                     double eps, void* grad_y, void* grad_small, void* workspace, int N, int C,
                                     int R, int64_t HW, cudaStream_t stream) {
  SADFFM_DISPATCH(dt, dffm_backward_impl, grad_out, yg, wts, eps, grad_y, grad_small, workspace, N, C, R, HW,
                  stream);
}

#undef SADFFM_DISPATCH

}  // namespace sadffm
}  // namespace eimn
