// Torch-free launcher of the NHWC whole-block inference kernels (csrc/cuda/block_*_kernels.cu): one folded EIMN
// block and the LayerNorm after it, forward only, in five launches:
//
//   molrcm_region  x -> r = DW5(GELU(Wq x + bq)) + b0      (x tile + 2-pixel halo and q in shared memory)
//   molrcm_mix     r, x -> a = x + Wo (SiLU(Wf y + bf) * (Wv x + bv)) + bo, y = [DW5d2, id, DW7d3](r)
//   sadffm_body    a -> y = W_out (GELU(t1) * t2) + b_out, t = DW3x3(W_in a + b_in) per hidden chunk in shared
//                  memory; DFFM LayerNorm z, per-tile sums of z, a_loc = w_se[:R] . GELU(W_lr z + b_lr)
//   dffm_global    per image: c = sigmoid(W_ce g + b_ce), k = w_se[R:] . g + b_se, g = GELU(W_gr mean(z) + b_gr)
//   dffm_apply     out = LN?(a + ls2 * y * c * sigmoid(a_loc + k))
//
// Every 1x1 convolution is a WMMA tensor-core GEMM over shared-memory tiles (fp16 / bf16 m16n16k16, float32 as
// 3xTF32 m16n16k8: ~1e-6 relative), accumulation float32. Shapes are EIMN's, compile-time: C = 64, split 24/8/32,
// 5x5, 5x5 d2, 7x7 d3, hidden 170, DFFM 16; the Triton path (eimn_kernels/nhwc.py) runs any other.
//
// Layout: x, out NHWC contiguous [N, H, W, 64] of the element type `dt` (float32, float16, bfloat16). Weights as
// eimn_kernels/triton_kernels/block_pack.py packs them: 1x1 weights transposed [C_in][C_out] in `dt`; depthwise
// weights tap-major float32 [K*K][padded channels]; everything else float32.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

#ifdef EIMN_CUDA_EMU
#include "cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

namespace eimn::cuda::block {

constexpr int kC = 64, kC1 = 24, kC2 = 8, kC3 = 32, kHid = 170, kR = 16;

struct BlockWeights {
  const void *wq_t, *wf_t, *wv_t, *wo_t, *win_t, *wout_t, *wlr_t;  // [C_in][C_out], element type dt
  const float *bq, *w0, *b0;                                      // w0 [25][64]
  const float *w1, *b1, *w2, *b2;                                 // w1 [25][32] (24 used), w2 [49][32]
  const float *bf, *bv, *bo;
  const float *b_in, *w_dw, *b_dw, *b_out;                        // w_dw [9][2*170], b_in / b_dw [340]
  const float *ln_w, *ln_b, *b_lr, *w_sl;                         // DFFM LayerNorm; local branch
  const float *w_gr, *b_gr, *w_ce, *b_ce, *w_sg, *b_se;           // global branch: w_gr [16][64], w_ce [64][16]
  const float *ls2;                                               // layer scale 2
  const float *norm_w, *norm_b;                                   // the LayerNorm after the block (or null)
  float eps, norm_eps;
  bool tf32x3 = true;                                             // float32 GEMMs: 3xTF32, else one TF32 product
};

// Bytes of the workspace block_forward needs for an (N, H, W) input of element type dt.
size_t block_workspace_bytes(int64_t N, int64_t H, int64_t W, DType dt);

// out = the block (and its LayerNorm) applied to x; both [N, H, W, 64] NHWC; workspace of block_workspace_bytes.
// Returns cudaSuccess or the first launch error; cudaErrorInvalidValue for float64.
cudaError_t block_forward(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* x, void* out,
                          void* workspace, cudaStream_t stream);

// The stages, one launch each (block_forward calls them in order; exposed for tests). x, r, a, y, out: [N, H, W, 64]
// of dt; a_loc [N*H*W], part [N * body_tiles_per_image * 64], cg [N*64], kk [N]: float32.
int64_t body_tiles_per_image(int64_t H, int64_t W);
cudaError_t molrcm_region(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* x, void* r,
                          cudaStream_t stream);
cudaError_t molrcm_mix(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* r,
                       const void* x, void* a, cudaStream_t stream);
cudaError_t sadffm_body(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* a, void* y,
                        float* a_loc, float* part, cudaStream_t stream);
cudaError_t dffm_global(int64_t N, int64_t H, int64_t W, const BlockWeights& w, const float* part, float* cg,
                        float* kk, cudaStream_t stream);
cudaError_t dffm_apply(int64_t N, int64_t H, int64_t W, DType dt, const BlockWeights& w, const void* a, const void* y,
                       const float* a_loc, const float* cg, const float* kk, void* out, cudaStream_t stream);

}  // namespace eimn::cuda::block
