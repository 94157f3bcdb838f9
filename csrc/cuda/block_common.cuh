// Shared pieces of the NHWC block kernels (block_molrcm_kernels.cu, block_sadffm_kernels.cu), torch-free:
// 4-channel vector loads and stores, 16-byte copies of activation rows into shared memory, and the block-wide WMMA
// GEMM over shared-memory tiles that every 1x1 convolution of the block runs on.
//
// GEMM: C[M][N] (float) (+)= A[M][K] * B[K][N], A and B in shared memory (element type T, row-major, leading
// dimensions multiples of 8 elements, tiles 32-byte aligned). Warps take the 16x16 output tiles in turn.
// fp16 / bf16: m16n16k16 with float accumulation. float32: 3xTF32 (m16n16k8): a = a_hi + a_lo, b likewise, and
// a_lo b_hi + a_hi b_lo + a_hi b_hi accumulated in float (the small terms first): ~1e-6 relative, like Triton's
// tf32x3 (EIMN_FP32_DOT in the Triton path).
#pragma once
#include "cuda/block_kernels.cuh"  // first: the CUDA runtime or its emulation

#ifdef EIMN_CUDA_EMU
#include "wmma_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include "common/eimn_math.h"
#include "cuda/cuda_smem.cuh"

#ifndef EIMN_CUDA_EMU
#define EIMN_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define EIMN_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace eimn::cuda::block {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 256;  // every block kernel: 8 warps
constexpr int kLd = kC + 8;    // shared-memory row stride of a 64-channel tile (padding against bank conflicts)

// ---------------------------------------------------------------- 4 consecutive channels as a float4
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
#ifndef EIMN_CUDA_EMU
__device__ __forceinline__ __half2 pack_half(float a, float b) { return __floats2half2_rn(a, b); }
__device__ __forceinline__ __nv_bfloat162 pack_bf16(float a, float b) { return __floats2bfloat162_rn(a, b); }
template <typename H, typename H2>
__device__ __forceinline__ void st4_half(H* p, float4 v, H2 (*pack)(float, float)) {  // 8 bytes
  H2 a = pack(v.x, v.y), b = pack(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<unsigned*>(&a);
  u.y = *reinterpret_cast<unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = u;
}
__device__ __forceinline__ void st4(__half* p, float4 v) { st4_half(p, v, pack_half); }
__device__ __forceinline__ void st4(__nv_bfloat16* p, float4 v) { st4_half(p, v, pack_bf16); }
#endif

// 16 bytes of T as floats: 4 (float32) or 8 (fp16 / bf16) consecutive channels per global access (ldv / stv: global
// memory only; shared-memory tiles use ld4 / st4).
template <typename T> constexpr int kVec = 16 / static_cast<int>(sizeof(T));
template <int V> __device__ __forceinline__ void ldf(const float* p, float (&v)[V]) {  // V floats, 16-byte aligned
#pragma unroll
  for (int k = 0; k < V; k += 4) {
    const float4 a = ld4(p + k);
    v[k] = a.x; v[k + 1] = a.y; v[k + 2] = a.z; v[k + 3] = a.w;
  }
}
// Global-memory vectors of activations: __ldg / __stwb (ld.global.nc.v4 / st.global.wb.v4 by inline PTX), so the
// 16-byte access survives the compiler (a float4 struct store was split into four 4-byte stores in one kernel).
__device__ __forceinline__ void ldv(const float* p, float (&v)[4]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}
__device__ __forceinline__ void stv(float* p, const float (&v)[4]) {
  __stwb(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
}
#ifndef EIMN_CUDA_EMU
template <typename H2, typename H>
__device__ __forceinline__ void ldv_half(const H* p, float (&v)[8]) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    H2 h;
    *reinterpret_cast<unsigned*>(&h) = w[k];
    v[2 * k] = static_cast<float>(h.x);
    v[2 * k + 1] = static_cast<float>(h.y);
  }
}
template <typename H2>  // 8 floats -> 8 half-type values in 16 bytes
__device__ __forceinline__ uint4 pack8(const float (&v)[8], H2 (*pack)(float, float)) {
  unsigned w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    H2 h = pack(v[2 * k], v[2 * k + 1]);
    w[k] = *reinterpret_cast<unsigned*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void ldv(const __half* p, float (&v)[8]) { ldv_half<__half2>(p, v); }
__device__ __forceinline__ void ldv(const __nv_bfloat16* p, float (&v)[8]) { ldv_half<__nv_bfloat162>(p, v); }
__device__ __forceinline__ void stv(__half* p, const float (&v)[8]) {
  __stwb(reinterpret_cast<uint4*>(p), pack8(v, pack_half));
}
__device__ __forceinline__ void stv(__nv_bfloat16* p, const float (&v)[8]) {
  __stwb(reinterpret_cast<uint4*>(p), pack8(v, pack_bf16));
}
#endif
// The same 16-byte vectors into shared memory.
__device__ __forceinline__ void stsv(float* p, const float (&v)[4]) { st4(p, make_float4(v[0], v[1], v[2], v[3])); }
#ifndef EIMN_CUDA_EMU
__device__ __forceinline__ void stsv(__half* p, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(p) = pack8(v, pack_half);
}
__device__ __forceinline__ void stsv(__nv_bfloat16* p, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(p) = pack8(v, pack_bf16);
}
#endif

__device__ __forceinline__ float4 f4(float v) { return make_float4(v, v, v, v); }
__device__ __forceinline__ float4 fma4(float4 a, float4 w, float4 acc) {
  return make_float4(fmaf(a.x, w.x, acc.x), fmaf(a.y, w.y, acc.y), fmaf(a.z, w.z, acc.z), fmaf(a.w, w.w, acc.w));
}

// rows x 64 channels of NHWC activations -> shared memory (row stride kLd), 16-byte copies; row i is pixel
// pix(i) when valid(i), zeros otherwise. Every thread of the block calls it.
template <typename T, typename Pix>
__device__ __forceinline__ void load_rows(T* s, const T* __restrict__ g, int rows, Pix pix) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte copy
  constexpr int kPerRow = kC / kVec;
  for (int i = threadIdx.x; i < rows * kPerRow; i += blockDim.x) {
    const int r = i / kPerRow, c = (i % kPerRow) * kVec;
    const int64_t p = pix(r);
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (p >= 0) v = *reinterpret_cast<const uint4*>(g + p * kC + c);
    *reinterpret_cast<uint4*>(s + r * kLd + c) = v;
  }
}

// rows x cols of a row-major global matrix (row stride gld) -> shared memory (row stride sld), zero beyond
// (grows, gcols); elementwise (weights: small, read once per block).
template <typename T>
__device__ __forceinline__ void load_matrix(T* s, int sld, const T* __restrict__ g, int gld, int rows, int cols,
                                            int grows, int gcols) {
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i / cols, c = i % cols;
    s[r * sld + c] = (r < grows && c < gcols) ? g[r * gld + c] : T(0.0f);
  }
}

// ---------------------------------------------------------------- tensor-core GEMM over shared memory
template <typename T> struct Mma;

template <> struct Mma<float> {  // 3xTF32
  static constexpr int kK = 8;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  template <typename F> static __device__ __forceinline__ void split(F& hi, F& lo) {
#pragma unroll
    for (int i = 0; i < hi.num_elements; ++i) {
      const float v = hi.x[i], h = wmma::__float_to_tf32(v);
      hi.x[i] = h;
      lo.x[i] = wmma::__float_to_tf32(v - h);
    }
  }
  static __device__ __forceinline__ void step(Acc& c, const float* a, int lda, const float* b, int ldb, bool x3) {
    A ah, al;
    B bh, bl;
    wmma::load_matrix_sync(ah, a, lda);
    wmma::load_matrix_sync(bh, b, ldb);
    split(ah, al);
    split(bh, bl);
    if (x3) {  // block-uniform
      wmma::mma_sync(c, al, bh, c);
      wmma::mma_sync(c, ah, bl, c);
    }
    wmma::mma_sync(c, ah, bh, c);
  }
};

#ifndef EIMN_CUDA_EMU
template <typename H> struct MmaHalf {  // fp16 / bf16
  static constexpr int kK = 16;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::row_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  static __device__ __forceinline__ void step(Acc& c, const H* a, int lda, const H* b, int ldb, bool) {
    A fa;
    B fb;
    wmma::load_matrix_sync(fa, a, lda);
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::mma_sync(c, fa, fb, c);
  }
};
template <> struct Mma<__half> : MmaHalf<__half> {};
template <> struct Mma<__nv_bfloat16> : MmaHalf<__nv_bfloat16> {};
#endif

// C (+)= A B, see the header. M, N multiples of 16, K a multiple of Mma<T>::kK. Every warp of the block calls it;
// the caller synchronises before reading C. tf32x3: float32 as 3xTF32 (else one TF32 product; halves ignore it).
template <typename T, int M, int N, int K, bool kAccumulate>
__device__ __forceinline__ void block_gemm(const T* A, int lda, const T* B, int ldb, float* C, int ldc,
                                           bool tf32x3) {
  static_assert(M % 16 == 0 && N % 16 == 0 && K % Mma<T>::kK == 0, "block_gemm: tile multiples");
  const int warp = static_cast<int>(threadIdx.x) / 32, nwarps = static_cast<int>(blockDim.x) / 32;
  for (int t = warp; t < (M / 16) * (N / 16); t += nwarps) {
    const int m0 = (t / (N / 16)) * 16, n0 = (t % (N / 16)) * 16;
    typename Mma<T>::Acc c;
    if (kAccumulate)
      wmma::load_matrix_sync(c, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(c, 0.0f);
#pragma unroll 4
    for (int k = 0; k < K; k += Mma<T>::kK) Mma<T>::step(c, A + m0 * lda + k, lda, B + k * ldb + n0, ldb, tf32x3);
    wmma::store_matrix_sync(C + m0 * ldc + n0, c, ldc, wmma::mem_row_major);
  }
}

// Sum over groups of G consecutive lanes (xor butterfly: fixed order, every lane of the group gets the sum).
template <int G> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int m = G / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Calls f(T{}) with T the element type of dt (the block path has no float64).
template <typename F> cudaError_t dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: return f(float{});
#ifndef EIMN_CUDA_EMU
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
#endif
    default: return cudaErrorInvalidValue;
  }
}

// Tiles of TH x TW output pixels; tile t of N * tiles_h * tiles_w: image t / tpi, row-major inside.
struct Tiling {
  int64_t H, W, tiles_w, tpi;
  __device__ __forceinline__ void origin(int64_t t, int64_t& n, int64_t& h0, int64_t& w0, int TH, int TW) const {
    n = t / tpi;
    const int64_t r = t % tpi;
    h0 = (r / tiles_w) * TH;
    w0 = (r % tiles_w) * TW;
  }
};

// One block per TH x TW tile of every image, kThreads threads, `smem` bytes of dynamic shared memory.
template <typename Kernel, typename... Args>
cudaError_t launch_tiled(Kernel kernel, size_t smem, int TH, int TW, int64_t N, int64_t H, int64_t W,
                         cudaStream_t stream, Args... args) {
  const int64_t tw = (W + TW - 1) / TW;
  const Tiling tl{H, W, tw, ((H + TH - 1) / TH) * tw};
  cudaError_t e = prepare_dynamic_smem(kernel, smem);
  if (e != cudaSuccess) return e;
  EIMN_LAUNCH(kernel, static_cast<unsigned>(N * tl.tpi), kThreads, smem, stream)(tl, args...);
  return cudaGetLastError();
}

}  // namespace
}  // namespace eimn::cuda::block
