// Torch-free launchers of the MOLRCM CUDA kernels (csrc/cuda/molrcm_kernels.cu).
//
// Plain C++ interface: raw device pointers, sizes, a dtype tag and a cudaStream_t. No torch/ATen here,
// so the kernels compile (and are unit-tested through a CPU emulation, tests/emu/) on their own.
// The ATen wrapper csrc/cuda/molrcm_cuda.cpp checks inputs, allocates outputs and workspaces and calls these.
//
// All image tensors are contiguous NCHW of the element type named by `dt`; weights are contiguous
// (C, 1, K, K) (depthwise) or (Cout, Cin) (1x1); biases (C,). "acc" pointers are float for
// float32/float16/bfloat16 and double for float64 (the accumulation type, eimn::acc_t).
// Every launcher returns cudaSuccess or the launch error (cudaGetLastError()).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

#ifdef EIMN_CUDA_EMU
#include "cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

namespace eimn::cuda::molrcm {

// ---------------------------------------------------------------------------------------------
// dw_mix: r = DW_{K0,d0}(q) + b0 (zero 'same' padding of q);
//         y = cat(DW_{K1,d1}(r[:c1]) + b1, r[c1:c1+c2], DW_{K2,d2}(r[c1+c2:]) + b2) (zero padding of r).
// ---------------------------------------------------------------------------------------------
struct DwMixShape {
  int64_t N, C, H, W;  // q: (N, C, H, W)
  int64_t c1, c2;      // channel split; c3 = C - c1 - c2
  int K0, K1, K2;      // odd kernel sizes of w0 (C,1,K0,K0), w1 (c1,1,K1,K1), w2 (c3,1,K2,K2)
  int d0, d1, d2;      // dilations >= 1
};

// Spatial tiling chosen for one call: one thread block per (n, channel, tile_h x tile_w output tile).
struct DwMixPlan {
  bool ok = false;          // false: see `why` (halo too large for shared memory, grid too large)
  const char* why = "";     // static string explaining a failure
  int tile_w = 0, tile_h = 0;
  int64_t tiles_x = 0, tiles_y = 0;
  int64_t partials = 0;     // P = N * tiles_y * tiles_x: per-channel partial sums of weight gradients
  size_t smem_bytes = 0;    // dynamic shared memory per block
  int threads = 256;
};

// Chooses the tile for forward (backward=false) or backward on `device` (its opt-in shared memory limit).
DwMixPlan dw_mix_plan(const DwMixShape& s, DType dt, bool backward, int device);

// y: (N, C, H, W). b1/b2/w1/w2 may be null when c1 / c3 is 0.
cudaError_t dw_mix_forward(const DwMixShape& s, const DwMixPlan& p, DType dt, const void* q, const void* w0,
                           const void* b0, const void* w1, const void* b1, const void* w2, const void* b2,
                           void* y, cudaStream_t stream);

// Gradients of dw_mix. Outputs: gq (N,C,H,W), gw0 (C,K0,K0), gb0 (C), gw1 (c1,K1,K1), gb1 (c1),
// gw2 (c3,K2,K2), gb2 (c3), all of type dt. Workspaces (acc type, written fully, no zeroing needed):
// ws0: C*P*(K0*K0+1), ws1: c1*P*(K1*K1+1), ws2: c3*P*(K2*K2+1) elements, P = p.partials.
// Weight gradients are per-block partial sums reduced in a fixed order: bitwise deterministic.
cudaError_t dw_mix_backward(const DwMixShape& s, const DwMixPlan& p, DType dt, const void* gy, const void* q,
                            const void* w0, const void* b0, const void* w1, const void* w2, void* gq, void* gw0,
                            void* gb0, void* gw1, void* gb1, void* gw2, void* gb2, void* ws0, void* ws1, void* ws2,
                            cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Fused elementwise epilogues of the 1x1 convolutions (the GEMMs themselves run in cuBLAS, called by the
// ATen wrapper). t/f/gs are GEMM results in the acc type, laid out (N, channels, HW).
// ---------------------------------------------------------------------------------------------

// proj_qv forward: t (N, Cq+Cv, HW) acc = [Wq; Wv] x  ->  q (N,Cq,HW) = GELU(t[:Cq] + bq), v = t[Cq:] + bv.
cudaError_t proj_qv_epilogue_forward(DType dt, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* t,
                                     const void* bq, const void* bv, void* q, void* v, cudaStream_t stream);

// proj_qv backward: tq (N,Cq,HW) acc = Wq x; G (N, Cq+Cv, HW) = [gq * GELU'(tq + bq); gv].
cudaError_t proj_qv_epilogue_backward(DType dt, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* tq,
                                      const void* bq, const void* gq, const void* gv, void* G, cudaStream_t stream);

// gate_out forward gate: f (N,C,HW) acc = Wf y  ->  s = SiLU(f + bf) * v.
cudaError_t gate_out_epilogue_gate(DType dt, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                                   const void* v, void* s, cudaStream_t stream);

// Bias epilogue: out (N,C,HW) = t + b[c] (t acc).
cudaError_t bias_epilogue(DType dt, int64_t N, int64_t C, int64_t HW, const void* t, const void* b, void* out,
                          cudaStream_t stream);

// gate_out backward: f (N,C,HW) acc = Wf y, gs (N,C,HW) acc = Wo^T grad_out; z = f + bf:
//   s = SiLU(z) * v, gv = gs * SiLU(z), gf = gs * v * SiLU'(z).
cudaError_t gate_out_epilogue_backward(DType dt, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                                       const void* v, const void* gs, void* s, void* gv, void* gf,
                                       cudaStream_t stream);

}  // namespace eimn::cuda::molrcm
