// SADFFM CUDA kernels (torch-free), DFFM gate (dffm_out), forward and backward. Launchers: sadffm_kernels.cuh.
// The 1x1 convolution W_out h and its gradients run in cuBLAS (through at::matmul in csrc/cuda/sadffm_cuda.cpp),
// written without bias; these kernels add b_out when they read the GEMM result. Per-pixel kernels over 1-D pixel
// tiles of one image (LayerNorm over C channels, local reduce, gates), per-image tiny kernels for the global-mean
// branch (g, c), and fixed-order reductions of per-block partials (sadffm_common.cuh).
#include "cuda/sadffm_common.cuh"

namespace eimn::cuda::sadffm {
namespace {

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
size_t sadffm_dffm_out_workspace_elems(int N, int C, int R, int64_t HW, bool backward) {
  if (N <= 0 || HW <= 0) return 0;
  const DffmWs L(N, C, R, HW);
  return static_cast<size_t>(backward ? L.end_bwd : L.end_fwd);
}

cudaError_t sadffm_dffm_out_forward(DType dt, const void* yg, const SadffmDffmWeights& wts, double eps, void* out,
                                    void* workspace, int N, int C, int R, int64_t HW, cudaStream_t stream) {
  SADFFM_DISPATCH(dt, dffm_forward_impl, yg, wts, eps, out, workspace, N, C, R, HW, stream);
}

cudaError_t sadffm_dffm_out_backward(DType dt, const void* grad_out, const void* yg, const SadffmDffmWeights& wts,
                                     double eps, void* grad_y, void* grad_small, void* workspace, int N, int C,
                                     int R, int64_t HW, cudaStream_t stream) {
  SADFFM_DISPATCH(dt, dffm_backward_impl, grad_out, yg, wts, eps, grad_y, grad_small, workspace, N, C, R, HW,
                  stream);
}

}  // namespace eimn::cuda::sadffm
