// SADFFM CUDA kernels, shared pieces (torch-free): loads and stores in the accumulation type, warp sums, the
// dynamic shared memory, the fixed-order reduction of block partials, and the launchers' dtype dispatch.
// Included by csrc/cuda/sadffm_gated_kernels.cu and sadffm_dffm_kernels.cu (each gets its own copy: anonymous
// namespace). Determinism: no atomics. Block partials are formed by warp shuffles (fixed tree) + a fixed-order sum
// over warps, then summed over blocks in a fixed order by sadffm_reduce_partials_kernel.
#pragma once
#include "cuda/sadffm_kernels.cuh"  // first: the CUDA runtime (or its emulation) that cuda_smem.cuh needs

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/eimn_math.h"
#include "cuda/cuda_smem.cuh"

// The public launchers' dispatch on the dtype tag: FN<T>(...) for T = float, double, __half, __nv_bfloat16.
#define SADFFM_DISPATCH(dt, FN, ...)                                         \
  switch (dt) {                                                             \
    case DType::kFloat32: return FN<float>(__VA_ARGS__);                    \
    case DType::kFloat64: return FN<double>(__VA_ARGS__);                   \
    case DType::kFloat16: return FN<__half>(__VA_ARGS__);                   \
    case DType::kBFloat16: return FN<__nv_bfloat16>(__VA_ARGS__);           \
  }                                                                         \
  return cudaErrorInvalidValue

namespace eimn::cuda::sadffm {
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

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace
}  // namespace eimn::cuda::sadffm
