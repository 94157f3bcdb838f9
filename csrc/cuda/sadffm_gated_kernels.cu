// SADFFM CUDA kernels (torch-free), gated front (gated_dwconv), forward and backward. Launchers: sadffm_kernels.cuh.
// The 1x1 convolution W_in x and its gradients run in cuBLAS (through at::matmul in csrc/cuda/sadffm_cuda.cpp),
// written without bias; these kernels add b_in when they read the GEMM result. One kernel per direction. Forward:
// KxK depthwise of channels j and j+hid from a shared-memory tile (+ halo), then GELU(x1)*x2; the post-depthwise
// tensor is never written. Backward: the same tile with a 2r halo, recomputes u = DW(t), forms grad_u in shared
// memory (tile + r halo), writes grad_t and per-block partials of the depthwise weight/bias and b_in gradients,
// summed over blocks in a fixed order (sadffm_common.cuh).
#include "cuda/sadffm_common.cuh"

namespace eimn::cuda::sadffm {
namespace {

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

}  // namespace

// ================================================================================================ public launchers
cudaError_t sadffm_gated_dwconv_forward(DType dt, const void* tg, const void* b_in, const void* w_dw,
                                        const void* b_dw, void* h, int N, int hid, int H, int W, int K,
                                        cudaStream_t stream) {
  SADFFM_DISPATCH(dt, gated_forward_impl, tg, b_in, w_dw, b_dw, h, N, hid, H, W, K, stream);
}

size_t sadffm_gated_dwconv_workspace_elems(int N, int hid, int H, int W, int K) {
  if (N <= 0 || H <= 0 || W <= 0) return 0;
  const size_t tiles = static_cast<size_t>(ceil_div(W, kGTW)) * ceil_div(H, kGTH);
  return 2 * static_cast<size_t>(hid) * N * tiles * (static_cast<size_t>(K) * K + 2);
}

cudaError_t sadffm_gated_dwconv_backward(DType dt, const void* grad_h, const void* tg, const void* b_in,
                                         const void* w_dw, const void* b_dw, void* grad_t, void* grad_small,
                                         void* workspace, int N, int hid, int H, int W, int K,
                                         cudaStream_t stream) {
  SADFFM_DISPATCH(dt, gated_backward_impl, grad_h, tg, b_in, w_dw, b_dw, grad_t, grad_small, workspace, N, hid, H,
                  W, K, stream);
}

}  // namespace eimn::cuda::sadffm
