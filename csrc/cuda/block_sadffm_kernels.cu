// SADFFM of a folded EIMN block, its residual and the LayerNorm after the block, NHWC inference
// (block_kernels.cuh): sadffm_body, dffm_global, dffm_apply, and block_forward (the five stages in order).
//
// sadffm_body: one block per 4 x 16 output tile; a on the tile and its 1-pixel halo (6 x 18 = 108 rows, padded to
//   112) in shared memory. Per chunk of 32 hidden channels (x1's and x2's: 64 columns of U): U = a W_in^T + b_in
//   (GEMM [112 x 64] x [64 x 64], zero outside the image: the 3x3 conv pads U), t = DW3x3(U) + b_dw and
//   h = GELU(t1) * t2 in shared memory, y += h W_out^T (GEMM [64 x 32] x [32 x 64], accumulated in shared memory).
//   U (340 channels) and h (170) never leave the SM. Epilogue: y = y + b_out to memory; DFFM's LayerNorm z per
//   pixel (4 lanes per pixel, xor-shuffle sums); the tile's per-channel sums of z (in pixel order) to `part`;
//   a_loc = w_se[:16] . GELU(z W_lr^T + b_lr) (GEMM [64 x 64] x [64 x 16]).
// dffm_global: one block per image; tile sums in tile order (deterministic): g, c, k.
// dffm_apply: 16 bytes of channels per thread and access (4 in float32, 8 in the half types); LayerNorm by xor
//   shuffles over the pixel's lanes.
#include "cuda/block_common.cuh"

namespace eimn::cuda::block {
namespace {

constexpr int kBodyTH = 4, kBodyTW = 16, kBodyP = kBodyTH * kBodyTW;  // 64 output pixels
constexpr int kBodyHW = kBodyTW + 2;                                  // 18
constexpr int kBodyHalo = (kBodyTH + 2) * kBodyHW;                    // 108 rows used
constexpr int kBodyRows = 112;                                        // padded to a multiple of 16
constexpr int kHC = 32;                                               // hidden channels per chunk
constexpr int kLdH = kHC + 8;                                         // row stride of h
constexpr int kApplyP = 64;                                           // pixels per apply block

template <typename T> constexpr size_t body_smem() {
  return static_cast<size_t>(kBodyRows * kLd + kC * kLd + kBodyP * kLdH + kHC * kLd) * sizeof(T) +
         static_cast<size_t>(kBodyRows * kLd + kBodyP * kLd) * sizeof(float);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sadffm_body_kernel(Tiling tl, BlockWeights w, const T* __restrict__ a,
                                                               T* __restrict__ y, float* __restrict__ a_loc,
                                                               float* __restrict__ part) {
  EIMN_DYN_SMEM(smem_raw);
  T* as = reinterpret_cast<T*>(smem_raw);  // [112][kLd]: a (haloed); after the chunks z
  T* win = as + kBodyRows * kLd;           // [64][kLd]: W_in^T chunk (x1 | x2); after the chunks W_lr^T
  T* hs = win + kC * kLd;                  // [64][kLdH]: h chunk
  T* wout = hs + kBodyP * kLdH;            // [32][kLd]: W_out^T rows of the chunk
  float* us = reinterpret_cast<float*>(wout + kHC * kLd);  // [112][kLd]: U chunk; after the chunks z (float)
  float* ys = us + kBodyRows * kLd;                         // [64][kLd]: y; after the epilogue W_lr z
  int64_t n, h0, w0;
  tl.origin(blockIdx.x, n, h0, w0, kBodyTH, kBodyTW);
  const int64_t H = tl.H, W = tl.W;
  auto halo_pix = [&](int i) -> int64_t {
    if (i >= kBodyHalo) return -1;
    const int64_t hy = h0 - 1 + i / kBodyHW, hx = w0 - 1 + i % kBodyHW;
    return (hy >= 0 && hy < H && hx >= 0 && hx < W) ? (n * H + hy) * W + hx : -1;
  };
  auto out_pix = [&](int p) -> int64_t {
    const int64_t py = h0 + p / kBodyTW, px = w0 + p % kBodyTW;
    return (py < H && px < W) ? (n * H + py) * W + px : -1;
  };
  load_rows(as, a, kBodyRows, halo_pix);
  const T* win_t = static_cast<const T*>(w.win_t);
  const T* wout_t = static_cast<const T*>(w.wout_t);
  for (int j0 = 0; j0 < kHid; j0 += kHC) {
    const int nj = kHid - j0 < kHC ? kHid - j0 : kHC;
    load_matrix(win, kLd, win_t + j0, 2 * kHid, kC, kHC, kC, nj);
    load_matrix(win + kHC, kLd, win_t + kHid + j0, 2 * kHid, kC, kHC, kC, nj);
    load_matrix(wout, kLd, wout_t + static_cast<int64_t>(j0) * kC, kC, kHC, kC, nj, kC);
    __syncthreads();
    block_gemm<T, kBodyRows, 2 * kHC, kC, false>(as, kLd, win, kLd, us, kLd, w.tf32x3);  // U chunk
    __syncthreads();
    for (int i = threadIdx.x; i < kBodyRows * 2 * kHC; i += blockDim.x) {  // + b_in; 0 outside the image
      const int row = i / (2 * kHC), col = i % (2 * kHC), j = j0 + col % kHC;
      const float b = j < kHid ? w.b_in[(col < kHC ? 0 : kHid) + j] : 0.0f;
      us[row * kLd + col] = halo_pix(row) >= 0 ? us[row * kLd + col] + b : 0.0f;
    }
    __syncthreads();
    {  // 3x3 depthwise and the gate: thread = (4 hidden channels jl, pixels p0 + 32 i)
      const int jl = (threadIdx.x % 8) * 4, p0 = threadIdx.x / 8;
#pragma unroll
      for (int i = 0; i < kBodyP / 32; ++i) {
        const int p = p0 + 32 * i, oy = p / kBodyTW, ox = p % kBodyTW;
        float t1[4], t2[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = j0 + jl + e;
          t1[e] = j < kHid ? w.b_dw[j] : 0.0f;
          t2[e] = j < kHid ? w.b_dw[kHid + j] : 0.0f;
        }
        for (int tap = 0; tap < 9; ++tap) {
          const float* u = us + ((oy + tap / 3) * kBodyHW + ox + tap % 3) * kLd + jl;
          const float4 u1 = ld4(u), u2 = ld4(u + kHC);
          const float v1[4] = {u1.x, u1.y, u1.z, u1.w}, v2[4] = {u2.x, u2.y, u2.z, u2.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = j0 + jl + e;
            if (j < kHid) {
              t1[e] = fmaf(w.w_dw[tap * 2 * kHid + j], v1[e], t1[e]);
              t2[e] = fmaf(w.w_dw[tap * 2 * kHid + kHid + j], v2[e], t2[e]);
            }
          }
        }
        st4(hs + p * kLdH + jl, make_float4(gelu(t1[0]) * t2[0], gelu(t1[1]) * t2[1], gelu(t1[2]) * t2[2],
                                            gelu(t1[3]) * t2[3]));
      }
    }
    __syncthreads();
    if (j0 == 0)
      block_gemm<T, kBodyP, kC, kHC, false>(hs, kLdH, wout, kLd, ys, kLd, w.tf32x3);  // y = h W_out^T
    else
      block_gemm<T, kBodyP, kC, kHC, true>(hs, kLdH, wout, kLd, ys, kLd, w.tf32x3);
    __syncthreads();
  }
  // epilogue: y out; LayerNorm z (4 lanes per pixel, 16 channels each); W_lr^T into win
  load_matrix(win, kLd, static_cast<const T*>(w.wlr_t), kR, kC, kR, kC, kR);
  {
    const int p = threadIdx.x / 4, q = (threadIdx.x % 4) * 16;
    const int64_t pix = out_pix(p);
    float v[16];
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      v[e] = ys[p * kLd + q + e] + w.b_out[q + e];
      s += v[e];
    }
    const float mu = group_sum<4>(s) * (1.0f / kC);
    float s2 = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) s2 += (v[e] - mu) * (v[e] - mu);
    const float rstd = 1.0f / sqrtf(group_sum<4>(s2) * (1.0f / kC) + w.eps);
    constexpr int V = kVec<T>;  // y goes out in 16-byte vectors
#pragma unroll
    for (int e = 0; e < 16; e += V) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = v[e + k];
      if (pix >= 0) stv(y + pix * kC + q + e, o);
    }
#pragma unroll
    for (int e = 0; e < 16; e += 4) {
      float z[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int c = q + e + k;
        z[k] = pix >= 0 ? (v[e + k] - mu) * rstd * w.ln_w[c] + w.ln_b[c] : 0.0f;
      }
      st4(us + p * kLd + q + e, make_float4(z[0], z[1], z[2], z[3]));
      st4(as + p * kLd + q + e, make_float4(z[0], z[1], z[2], z[3]));
    }
  }
  __syncthreads();
  block_gemm<T, kBodyP, kR, kC, false>(as, kLd, win, kLd, ys, kLd, w.tf32x3);  // z W_lr^T
  __syncthreads();
  if (threadIdx.x < kC) {  // the tile's sums of z, pixel order
    float s = 0.0f;
    for (int p = 0; p < kBodyP; ++p) s += us[p * kLd + threadIdx.x];
    part[static_cast<int64_t>(blockIdx.x) * kC + threadIdx.x] = s;
  } else if (threadIdx.x < kC + kBodyP) {  // a_loc = w_se[:R] . GELU(W_lr z + b_lr)
    const int p = threadIdx.x - kC;
    const int64_t pix = out_pix(p);
    if (pix >= 0) {
      float s = 0.0f;
      for (int r = 0; r < kR; ++r) s += w.w_sl[r] * gelu(ys[p * kLd + r] + w.b_lr[r]);
      a_loc[pix] = s;
    }
  }
}

__global__ void __launch_bounds__(kC) dffm_global_kernel(int64_t tpi, float inv_hw, BlockWeights w,
                                                        const float* __restrict__ part, float* __restrict__ cg,
                                                        float* __restrict__ kk) {
  EIMN_DYN_SMEM(smem_raw);
  float* zm = reinterpret_cast<float*>(smem_raw);  // [kC]
  float* g = zm + kC;                              // [kR]
  const int64_t n = blockIdx.x;
  const int c = threadIdx.x;
  float s = 0.0f;
  for (int64_t t = 0; t < tpi; ++t) s += part[(n * tpi + t) * kC + c];
  zm[c] = s * inv_hw;
  __syncthreads();
  if (c < kR) {
    float v = w.b_gr[c];
    for (int k = 0; k < kC; ++k) v += w.w_gr[c * kC + k] * zm[k];
    g[c] = gelu(v);
  }
  __syncthreads();
  float v = w.b_ce[c];
  for (int r = 0; r < kR; ++r) v += w.w_ce[c * kR + r] * g[r];
  cg[n * kC + c] = sigmoid(v);
  if (c == 0) {
    float k = w.b_se[0];
    for (int r = 0; r < kR; ++r) k += w.w_sg[r] * g[r];
    kk[n] = k;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dffm_apply_kernel(int64_t npix, int64_t hw, BlockWeights w,
                                                              const T* __restrict__ a, const T* __restrict__ y,
                                                              const float* __restrict__ a_loc,
                                                              const float* __restrict__ cg,
                                                              const float* __restrict__ kk, T* __restrict__ out) {
  constexpr int V = kVec<T>, G = kC / V;  // V channels (16 bytes) per thread, G lanes per pixel
  const int c = (threadIdx.x % G) * V;
  float ls[V];
  ldf<V>(w.ls2 + c, ls);
  for (int i = threadIdx.x / G; i < kApplyP; i += kThreads / G) {
    const int64_t p = static_cast<int64_t>(blockIdx.x) * kApplyP + i;
    const bool ok = p < npix;  // every lane takes part in the shuffles below
    const int64_t q = ok ? p : 0, n = q / hw;
    float av[V], yv[V], gv[V], o[V];
    ldv(a + q * kC + c, av);
    ldv(y + q * kC + c, yv);
    ldf<V>(cg + n * kC + c, gv);
    const float s = sigmoid(a_loc[q] + kk[n]);
    float sum = 0.0f;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      o[e] = av[e] + ls[e] * yv[e] * gv[e] * s;
      sum += o[e];
    }
    if (w.norm_w != nullptr) {
      const float mu = group_sum<G>(sum) * (1.0f / kC);
      float s2 = 0.0f;
#pragma unroll
      for (int e = 0; e < V; ++e) s2 += (o[e] - mu) * (o[e] - mu);
      const float rstd = 1.0f / sqrtf(group_sum<G>(s2) * (1.0f / kC) + w.norm_eps);
      float nw[V], nb[V];
      ldf<V>(w.norm_w + c, nw);
      ldf<V>(w.norm_b + c, nb);
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = (o[e] - mu) * rstd * nw[e] + nb[e];
    }
    if (ok) stv(out + q * kC + c, o);
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

int64_t body_tiles_per_image(int64_t H, int64_t W) {
  return ((H + kBodyTH - 1) / kBodyTH) * ((W + kBodyTW - 1) / kBodyTW);
}

cudaError_t sadffm_body(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* a, void* y,
                        float* a_loc, float* part, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    return launch_tiled(sadffm_body_kernel<T>, body_smem<T>(), kBodyTH, kBodyTW, N, H, W, stream, w,
                        static_cast<const T*>(a), static_cast<T*>(y), a_loc, part);
  });
}

cudaError_t dffm_global(int64_t N, int64_t H, int64_t W, const BlockWeights& w, const float* part, float* cg,
                        float* kk, cudaStream_t stream) {
  EIMN_LAUNCH(dffm_global_kernel, static_cast<unsigned>(N), kC, (kC + kR) * sizeof(float), stream)(
      body_tiles_per_image(H, W), 1.0f / static_cast<float>(H * W), w, part, cg, kk);
  return cudaGetLastError();
}

cudaError_t dffm_apply(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* a, const void* y,
                       const float* a_loc, const float* cg, const float* kk, void* out, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const int64_t npix = N * H * W;
    EIMN_LAUNCH(dffm_apply_kernel<T>, static_cast<unsigned>((npix + kApplyP - 1) / kApplyP), kThreads, 0, stream)(
        npix, H * W, w, static_cast<const T*>(a), static_cast<const T*>(y), a_loc, cg, kk, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

size_t block_workspace_bytes(int64_t N, int64_t H, int64_t W, DType dt) {
  const size_t es = dt == DType::kFloat32 ? 4 : 2, P = static_cast<size_t>(N * H * W);
  return 3 * align256(P * kC * es) + align256(P * 4) + align256(static_cast<size_t>(N) * body_tiles_per_image(H, W) * kC * 4) +
         align256(static_cast<size_t>(N) * kC * 4) + align256(static_cast<size_t>(N) * 4);
}

cudaError_t block_forward(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* x, void* out,
                          void* workspace, cudaStream_t stream) {
  if (dt == DType::kFloat64) return cudaErrorInvalidValue;
  if (N == 0 || H == 0 || W == 0) return cudaSuccess;
  const size_t es = dt == DType::kFloat32 ? 4 : 2, P = static_cast<size_t>(N * H * W);
  unsigned char* p = static_cast<unsigned char*>(workspace);
  auto take = [&](size_t bytes) {
    unsigned char* q = p;
    p += align256(bytes);
    return q;
  };
  void* r = take(P * kC * es);
  void* a = take(P * kC * es);
  void* y = take(P * kC * es);
  float* a_loc = reinterpret_cast<float*>(take(P * 4));
  float* part = reinterpret_cast<float*>(take(static_cast<size_t>(N) * body_tiles_per_image(H, W) * kC * 4));
  float* cg = reinterpret_cast<float*>(take(static_cast<size_t>(N) * kC * 4));
  float* kk = reinterpret_cast<float*>(take(static_cast<size_t>(N) * 4));
  cudaError_t e = molrcm_region(N, H, W, dt, w, x, r, stream);
  if (e == cudaSuccess) e = molrcm_mix(N, H, W, dt, w, r, x, a, stream);
  if (e == cudaSuccess) e = sadffm_body(N, H, W, dt, w, a, y, a_loc, part, stream);
  if (e == cudaSuccess) e = dffm_global(N, H, W, w, part, cg, kk, stream);
  if (e == cudaSuccess) e = dffm_apply(N, H, W, dt, w, a, y, a_loc, cg, kk, out, stream);
  return e;
}

}  // namespace eimn::cuda::block
