// MOLRCM of a folded EIMN block, NHWC inference (block_kernels.cuh): molrcm_region and molrcm_mix.
//
// molrcm_region: one block per 8 x 16 output tile. x on the tile and its 2-pixel halo (12 x 20 = 240 rows) and
//   Wq^T go to shared memory; q = GELU(x Wq^T + bq) is one tensor-core GEMM [240 x 64] x [64 x 64] into shared
//   memory (zero outside the image: r's 'same' padding is q's); the 25 taps of the 5x5 depthwise conv read q from
//   shared memory, four channels per 16-byte load (4 FMAs per shared load), and r goes out in 16-byte vectors.
// molrcm_mix: one block per 4 x 16 output tile. y = [DW5d2(r[:24]), r[24:32], DW7d3(r[32:])] from r through L1
//   (its halos of 4 and 9 pixels are too large for shared memory at this tile), 16 bytes of channels per thread
//   and load, the branch uniform per warp; then three GEMMs in shared memory: f = y Wf^T, v = x Wv^T, a = g Wo^T with
//   g = SiLU(f + bf) * (v + bv); out = a + bo + x (x read again from memory, an L2 hit).
#include "cuda/block_common.cuh"

namespace eimn::cuda::block {
namespace {

constexpr int kRegTH = 8, kRegTW = 16, kRegHalo = 2;
constexpr int kRegHW = kRegTW + 2 * kRegHalo;                 // 20
constexpr int kRegRows = (kRegTH + 2 * kRegHalo) * kRegHW;    // 240 = 15 x 16
constexpr int kMixTH = 4, kMixTW = 16, kMixP = kMixTH * kMixTW;  // 64

template <typename T> constexpr size_t region_smem() {
  return (static_cast<size_t>(kRegRows) + kC) * kLd * sizeof(T) + static_cast<size_t>(kRegRows) * kLd * sizeof(float);
}
template <typename T> constexpr size_t mix_smem() {
  return static_cast<size_t>(kMixP + 3 * kC) * kLd * sizeof(T) + 2 * static_cast<size_t>(kMixP) * kLd * sizeof(float);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) molrcm_region_kernel(Tiling tl, BlockWeights w, const T* __restrict__ x,
                                                                 T* __restrict__ r) {
  EIMN_DYN_SMEM(smem_raw);
  T* xs = reinterpret_cast<T*>(smem_raw);                 // [240][kLd]
  T* wq = xs + kRegRows * kLd;                            // [64][kLd]
  float* qs = reinterpret_cast<float*>(wq + kC * kLd);    // [240][kLd]
  int64_t n, h0, w0;
  tl.origin(blockIdx.x, n, h0, w0, kRegTH, kRegTW);
  const int64_t H = tl.H, W = tl.W;
  auto halo_pix = [&](int i) -> int64_t {
    const int64_t hy = h0 - kRegHalo + i / kRegHW, hx = w0 - kRegHalo + i % kRegHW;
    return (hy >= 0 && hy < H && hx >= 0 && hx < W) ? (n * H + hy) * W + hx : -1;
  };
  load_rows(xs, x, kRegRows, halo_pix);
  load_matrix(wq, kLd, static_cast<const T*>(w.wq_t), kC, kC, kC, kC, kC);
  __syncthreads();
  block_gemm<T, kRegRows, kC, kC, false>(xs, kLd, wq, kLd, qs, kLd, w.tf32x3);
  __syncthreads();
  for (int i = threadIdx.x; i < kRegRows * (kC / 4); i += blockDim.x) {  // q = GELU(. + bq), 0 outside the image
    const int row = i / (kC / 4), c = (i % (kC / 4)) * 4;
    float* q = qs + row * kLd + c;
    const bool in = halo_pix(row) >= 0;
    float4 v = ld4(q);
    const float4 b = ld4(w.bq + c);
    v = in ? make_float4(gelu(v.x + b.x), gelu(v.y + b.y), gelu(v.z + b.z), gelu(v.w + b.w)) : f4(0.0f);
    st4(q, v);
  }
  __syncthreads();
  // 5x5 taps: thread = (V-channel group c, pixels p0 + G i); V channels = 16 bytes of T in the store of r
  constexpr int V = kVec<T>, G = kC / V, kPix = kRegTH * kRegTW * G / kThreads;  // fp32: 4, 16, 8; half: 8, 8, 4
  const int c = (threadIdx.x % G) * V, p0 = threadIdx.x / G;
  float acc[kPix][V], b0[V];
  ldf<V>(w.b0 + c, b0);
#pragma unroll
  for (int i = 0; i < kPix; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[i][e] = b0[e];
  for (int tap = 0; tap < 25; ++tap) {
    float wt[V];
    ldf<V>(w.w0 + tap * kC + c, wt);
    const int dy = tap / 5, dx = tap % 5;
#pragma unroll
    for (int i = 0; i < kPix; ++i) {
      const int p = p0 + (kThreads / G) * i, oy = p / kRegTW, ox = p % kRegTW;
      float q[V];
      ldf<V>(qs + ((oy + dy) * kRegHW + ox + dx) * kLd + c, q);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[i][e] = fmaf(q[e], wt[e], acc[i][e]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPix; ++i) {
    const int p = p0 + (kThreads / G) * i;
    const int64_t py = h0 + p / kRegTW, px = w0 + p % kRegTW;
    if (py < H && px < W) stv(r + ((n * H + py) * W + px) * kC + c, acc[i]);
  }
}

// One V-channel group (channels c .. c+V-1, c0 = c's offset in its branch) of a dilated K x K depthwise conv of r
// at the thread's pixels; wd tap-major [K*K][32], bd [32].
template <typename T, int K, int D, int kPix, int V>
__device__ __forceinline__ void dilated(float (&acc)[kPix][V], const T* __restrict__ r, const float* __restrict__ wd,
                                        const float* __restrict__ bd, int c, int c0, const int64_t (&py)[kPix],
                                        const int64_t (&px)[kPix], int64_t n, int64_t H, int64_t W) {
  constexpr int R = D * (K - 1) / 2;
  float b[V];
  ldf<V>(bd + c0, b);
#pragma unroll
  for (int i = 0; i < kPix; ++i)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[i][e] = b[e];
  for (int tap = 0; tap < K * K; ++tap) {
    float wt[V];
    ldf<V>(wd + tap * 32 + c0, wt);
    const int dy = D * (tap / K) - R, dx = D * (tap % K) - R;
#pragma unroll
    for (int i = 0; i < kPix; ++i) {
      const int64_t yy = py[i] + dy, xx = px[i] + dx;
      if (yy >= 0 && yy < H && xx >= 0 && xx < W) {
        float v[V];
        ldv(r + ((n * H + yy) * W + xx) * kC + c, v);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[i][e] = fmaf(v[e], wt[e], acc[i][e]);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) molrcm_mix_kernel(Tiling tl, BlockWeights w, const T* __restrict__ r,
                                                              const T* __restrict__ x, T* __restrict__ a) {
  EIMN_DYN_SMEM(smem_raw);
  T* ys = reinterpret_cast<T*>(smem_raw);    // [64][kLd]: y, then x, then g
  T* wf = ys + kMixP * kLd;                  // [64][kLd] x 3: Wf^T, Wv^T, Wo^T
  T* wv = wf + kC * kLd;
  T* wo = wv + kC * kLd;
  float* fs = reinterpret_cast<float*>(wo + kC * kLd);  // [64][kLd]: f, then a
  float* vs = fs + kMixP * kLd;                          // [64][kLd]: v
  int64_t n, h0, w0;
  tl.origin(blockIdx.x, n, h0, w0, kMixTH, kMixTW);
  const int64_t H = tl.H, W = tl.W;
  load_matrix(wf, kLd, static_cast<const T*>(w.wf_t), kC, kC, kC, kC, kC);
  load_matrix(wv, kLd, static_cast<const T*>(w.wv_t), kC, kC, kC, kC, kC);
  load_matrix(wo, kLd, static_cast<const T*>(w.wo_t), kC, kC, kC, kC, kC);
  {  // y: thread = (V-channel group g, pixels pl + TG i), TG threads per group: the branch is uniform per warp
    constexpr int V = kVec<T>, G = kC / V, TG = kThreads / G, kPix = kMixP / TG;  // fp32: 4, 16, 16, 4; half: 8, 8, 32, 2
    static_assert(kC1 % V == 0 && kC2 % V == 0 && TG % 16 == 0, "branches must not share a group or a half-warp");
    const int g = threadIdx.x / TG, pl = threadIdx.x % TG, c = V * g;
    int64_t py[kPix], px[kPix];
#pragma unroll
    for (int i = 0; i < kPix; ++i) {
      py[i] = h0 + (pl + TG * i) / kMixTW;
      px[i] = w0 + (pl + TG * i) % kMixTW;
    }
    float acc[kPix][V];
    if (c < kC1) {
      dilated<T, 5, 2, kPix, V>(acc, r, w.w1, w.b1, c, c, py, px, n, H, W);
    } else if (c < kC1 + kC2) {
#pragma unroll
      for (int i = 0; i < kPix; ++i) {
        if (py[i] < H && px[i] < W) {
          ldv(r + ((n * H + py[i]) * W + px[i]) * kC + c, acc[i]);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) acc[i][e] = 0.0f;
        }
      }
    } else {
      dilated<T, 7, 3, kPix, V>(acc, r, w.w2, w.b2, c, c - kC1 - kC2, py, px, n, H, W);
    }
#pragma unroll
    for (int i = 0; i < kPix; ++i) stsv(ys + (pl + TG * i) * kLd + c, acc[i]);
  }
  __syncthreads();
  block_gemm<T, kMixP, kC, kC, false>(ys, kLd, wf, kLd, fs, kLd, w.tf32x3);  // f = y Wf^T
  __syncthreads();
  auto pix = [&](int i) -> int64_t {
    const int64_t py = h0 + i / kMixTW, px = w0 + i % kMixTW;
    return (py < H && px < W) ? (n * H + py) * W + px : -1;
  };
  load_rows(ys, x, kMixP, pix);
  __syncthreads();
  block_gemm<T, kMixP, kC, kC, false>(ys, kLd, wv, kLd, vs, kLd, w.tf32x3);  // v = x Wv^T
  __syncthreads();
  for (int i = threadIdx.x; i < kMixP * (kC / 4); i += blockDim.x) {  // g = SiLU(f + bf) * (v + bv) -> ys
    const int p = i / (kC / 4), c = (i % (kC / 4)) * 4;
    const float4 f = ld4(fs + p * kLd + c), v = ld4(vs + p * kLd + c), bf = ld4(w.bf + c), bv = ld4(w.bv + c);
    st4(ys + p * kLd + c, make_float4(silu(f.x + bf.x) * (v.x + bv.x), silu(f.y + bf.y) * (v.y + bv.y),
                                      silu(f.z + bf.z) * (v.z + bv.z), silu(f.w + bf.w) * (v.w + bv.w)));
  }
  __syncthreads();
  block_gemm<T, kMixP, kC, kC, false>(ys, kLd, wo, kLd, fs, kLd, w.tf32x3);  // Wo g
  __syncthreads();
  constexpr int V = kVec<T>;
  for (int i = threadIdx.x; i < kMixP * (kC / V); i += blockDim.x) {  // a = x + Wo g + bo, 16-byte accesses
    const int p = i / (kC / V), c = (i % (kC / V)) * V;
    const int64_t q = pix(p);
    if (q < 0) continue;
    float o[V], bo[V], xv[V];
    ldf<V>(fs + p * kLd + c, o);
    ldf<V>(w.bo + c, bo);
    ldv(x + q * kC + c, xv);
#pragma unroll
    for (int e = 0; e < V; ++e) o[e] += bo[e] + xv[e];
    stv(a + q * kC + c, o);
  }
}

}  // namespace

cudaError_t molrcm_region(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* x, void* r,
                          cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    return launch_tiled(molrcm_region_kernel<T>, region_smem<T>(), kRegTH, kRegTW, N, H, W, stream, w,
                        static_cast<const T*>(x), static_cast<T*>(r));
  });
}

cudaError_t molrcm_mix(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* r,
                       const void* x, void* a, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    return launch_tiled(molrcm_mix_kernel<T>, mix_smem<T>(), kMixTH, kMixTW, N, H, W, stream, w,
                        static_cast<const T*>(r), static_cast<const T*>(x), static_cast<T*>(a));
  });
}

}  // namespace eimn::cuda::block
