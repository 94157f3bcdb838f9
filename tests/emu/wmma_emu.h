// CPU emulation of the WMMA API subset that csrc/cuda/block_common.cuh uses (float / tf32 only), on top of
// cuda_emu.h. A fragment holds its whole tile in every lane (the real per-lane layout is unspecified by the API,
// and the kernels only touch fragment elements with elementwise operations): load_matrix_sync reads the tile,
// mma_sync multiplies whole tiles, store_matrix_sync writes it from lane 0 and then meets the warp at a barrier, so
// a GEMM over shared memory computes what the tensor cores compute. __float_to_tf32 rounds to 10 mantissa bits,
// to nearest with ties away from zero (cvt.rna.tf32.f32), so 3xTF32 keeps its ~1e-6 accuracy here too.
#pragma once
#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
enum layout_t { mem_row_major = 0 };
namespace precision { struct tf32 {}; }

template <typename Use, int M, int N, int K> struct tile_dims;
template <int M, int N, int K> struct tile_dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile_dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile_dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
  static constexpr int rows = tile_dims<Use, M, N, K>::rows, cols = tile_dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) {  // finite: round the 13 dropped bits to nearest, ties away
    u += 0x1000u;
    u &= 0xffffe000u;
  }
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

template <typename F> inline void load_matrix_sync(F& f, const float* p, unsigned ldm) {
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = p[r * ldm + c];
}
template <typename F> inline void load_matrix_sync(F& f, const float* p, unsigned ldm, layout_t) {
  load_matrix_sync(f, p, ldm);
}
template <typename F> inline void fill_fragment(F& f, float v) {
  for (int i = 0; i < F::num_elements; ++i) f.x[i] = v;
}
template <typename F> inline void store_matrix_sync(float* p, const F& f, unsigned ldm, layout_t) {
  if (threadIdx.x % 32 == 0)
    for (int r = 0; r < F::rows; ++r)
      for (int c = 0; c < F::cols; ++c) p[r * ldm + c] = f.x[r * F::cols + c];
  emu::cur_block->warps[threadIdx.x / 32].bar.wait();
}
template <typename D, typename A, typename B, typename C> inline void mma_sync(D& d, const A& a, const B& b, const C& c) {
  constexpr int M = A::rows, K = A::cols, N = B::cols;
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s = std::fma(a.x[i * K + k], b.x[k * N + j], s);
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace nvcuda::wmma
