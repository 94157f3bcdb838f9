// Torch-free launchers of the SADFFM CUDA kernels (gated_dwconv, dffm_out), forward and backward.
// Included by csrc/cuda/sadffm_cuda.cpp (the ATen wrapper); defined in csrc/cuda/sadffm_gated_kernels.cu and
// sadffm_dffm_kernels.cu.
//
// Conventions (all launchers):
// * Image tensors are contiguous NCHW; "scalar" means the input dtype (float32, float64, float16, bfloat16),
//   "acc" means the accumulation dtype: float64 for float64 inputs, float32 otherwise.
// * The 1x1 convolutions are NOT done here: the wrapper computes them with cuBLAS (at::matmul) WITHOUT bias;
//   the kernels add the 1x1 bias (b_in / b_out) themselves when they read the GEMM result.
// * Weight gradients are reduced deterministically: every block writes its partial sums to a workspace, then a
//   fixed-order reduction kernel sums them (no float atomics anywhere).
// * Every launcher only enqueues work on `stream` and returns the first CUDA error (cudaSuccess otherwise).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

#if defined(__CUDACC__)
#define SADFFM_HD __host__ __device__
#else
#define SADFFM_HD
#endif

namespace eimn::cuda::sadffm {

// ------------------------------------------------------------------------------------------------------------
// gated_dwconv: t = W_in x (cuBLAS, no bias), u = DW_K(t + b_in) + b_dw, h = GELU(u[:hid]) * u[hid:].
// ------------------------------------------------------------------------------------------------------------

// Forward depthwise + gate. tg: (N, 2*hid, H, W) scalar (the 1x1 GEMM output without bias); b_in: (2*hid);
// w_dw: (2*hid, K, K); b_dw: (2*hid) (all scalar); h: (N, hid, H, W) scalar output. K odd.
cudaError_t sadffm_gated_dwconv_forward(DType dt, const void* tg, const void* b_in, const void* w_dw,
                                        const void* b_dw, void* h, int N, int hid, int H, int W, int K,
                                        cudaStream_t stream);

// Number of acc elements of the workspace that sadffm_gated_dwconv_backward needs.
size_t sadffm_gated_dwconv_workspace_elems(int N, int hid, int H, int W, int K);

// Backward of the depthwise + gate. Inputs as in the forward plus grad_h: (N, hid, H, W) scalar.
// Outputs (acc): grad_t: (N, 2*hid, H, W) = dL/d(t + b_in) (so grad_x = W_in^T grad_t, grad_W_in = grad_t x^T,
// done by the wrapper with cuBLAS); grad_small: (2*hid, K*K + 2) with, per channel, [grad w_dw (K*K), grad b_dw,
// grad b_in]. workspace: sadffm_gated_dwconv_workspace_elems(...) acc elements.
cudaError_t sadffm_gated_dwconv_backward(DType dt, const void* grad_h, const void* tg, const void* b_in,
                                         const void* w_dw, const void* b_dw, void* grad_t, void* grad_small,
                                         void* workspace, int N, int hid, int H, int W, int K,
                                         cudaStream_t stream);

// ------------------------------------------------------------------------------------------------------------
// dffm_out: y = W_out h (cuBLAS, no bias) + b_out, then the DFFM gate y * c * s.
// ------------------------------------------------------------------------------------------------------------

// Weights of the DFFM gate, all scalar, contiguous: b_out (C), ln_w (C), ln_b (C), w_gr (R, C), b_gr (R),
// w_lr (R, C), b_lr (R), w_ce (C, R), b_ce (C), w_se (2R), b_se (1).
struct SadffmDffmWeights {
  const void* b_out;
  const void* ln_w;
  const void* ln_b;
  const void* w_gr;
  const void* b_gr;
  const void* w_lr;
  const void* b_lr;
  const void* w_ce;
  const void* b_ce;
  const void* w_se;
  const void* b_se;
};

// Layout of the packed acc gradient vector of the small DFFM weights written by sadffm_dffm_out_backward.
// The first `passc_slots()` entries are the per-pixel reductions (in this order), then the per-image ones.
struct SadffmDffmGradLayout {
  int64_t C, R;
  SADFFM_HD int64_t ln_w() const { return 0; }
  SADFFM_HD int64_t ln_b() const { return C; }
  SADFFM_HD int64_t w_lr() const { return 2 * C; }               // (R, C)
  SADFFM_HD int64_t b_lr() const { return 2 * C + R * C; }        // (R)
  SADFFM_HD int64_t w_se_local() const { return b_lr() + R; }     // grad of w_se[0:R]
  SADFFM_HD int64_t b_se() const { return w_se_local() + R; }     // (1)
  SADFFM_HD int64_t b_out() const { return b_se() + 1; }          // (C)
  SADFFM_HD int64_t passc_slots() const { return b_out() + C; }
  SADFFM_HD int64_t w_se_global() const { return passc_slots(); }  // grad of w_se[R:2R]
  SADFFM_HD int64_t w_gr() const { return w_se_global() + R; }    // (R, C)
  SADFFM_HD int64_t b_gr() const { return w_gr() + R * C; }       // (R)
  SADFFM_HD int64_t w_ce() const { return b_gr() + R; }           // (C, R)
  SADFFM_HD int64_t b_ce() const { return w_ce() + C * R; }       // (C)
  SADFFM_HD int64_t total() const { return b_ce() + C; }
};

// Number of acc elements of the workspace of sadffm_dffm_out_forward (backward=false) / _backward (true).
size_t sadffm_dffm_out_workspace_elems(int N, int C, int R, int64_t HW, bool backward);

// Forward. yg: (N, C, HW) scalar = W_out h without bias; out: (N, C, HW) scalar.
cudaError_t sadffm_dffm_out_forward(DType dt, const void* yg, const SadffmDffmWeights& wts, double eps, void* out,
                                    void* workspace, int N, int C, int R, int64_t HW, cudaStream_t stream);

// Backward. grad_out, yg: (N, C, HW) scalar. Outputs (acc): grad_y: (N, C, HW) = dL/dy (so grad_h = W_out^T grad_y
// and grad_W_out = grad_y h^T, done by the wrapper with cuBLAS); grad_small: SadffmDffmGradLayout{C, R}.total().
cudaError_t sadffm_dffm_out_backward(DType dt, const void* grad_out, const void* yg, const SadffmDffmWeights& wts,
                                     double eps, void* grad_y, void* grad_small, void* workspace, int N, int C,
                                     int R, int64_t HW, cudaStream_t stream);

}  // namespace eimn::cuda::sadffm
