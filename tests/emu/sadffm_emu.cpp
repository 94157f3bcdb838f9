// CPU emulation harness of csrc/cuda/sadffm_{gated,dffm}_kernels.cu (see sadffm_emu.h), driven by
// tests/test_cuda_sadffm_emu.py through ctypes. The test writes sadffm_common.cuh and the two .cu files, concatenated,
// with the CUDA-only syntax rewritten (sadffm_kernels_emu.inc), and compiles this file against it. dtype 0: float32, 1: float64. Workspaces are poisoned with NaN, so a partial that is
// read but never written shows up in the result. Tensors are passed as host pointers (torch CPU tensors).
#define EIMN_CUDA_EMU 1
#include "sadffm_kernels_emu.inc"

#include <cmath>
#include <vector>

using eimn::DType;
using eimn::cuda::sadffm::SadffmDffmWeights;

namespace {
DType dtype_of(int dt) { return dt == 0 ? DType::kFloat32 : DType::kFloat64; }
size_t acc_bytes(int dt) { return dt == 0 ? sizeof(float) : sizeof(double); }
std::vector<unsigned char> poisoned(size_t elems, int dt) {
  std::vector<unsigned char> v(elems * acc_bytes(dt) + 8);
  if (dt == 0) { float* p = reinterpret_cast<float*>(v.data()); for (size_t i = 0; i < elems; ++i) p[i] = NAN; }
  else { double* p = reinterpret_cast<double*>(v.data()); for (size_t i = 0; i < elems; ++i) p[i] = NAN; }
  return v;
}
SadffmDffmWeights weights(void* const* w) {
  return SadffmDffmWeights{w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10]};
}
}  // namespace

extern "C" {
void emu_set_smem_limit(int v) { emu::smem_limit = v; }

int emu_gated_forward(int dt, const void* tg, const void* b_in, const void* w_dw, const void* b_dw, void* h, int N,
                      int hid, int H, int W, int K) {
  return eimn::cuda::sadffm::sadffm_gated_dwconv_forward(dtype_of(dt), tg, b_in, w_dw, b_dw, h, N, hid, H, W, K, nullptr);
}

int emu_gated_backward(int dt, const void* grad_h, const void* tg, const void* b_in, const void* w_dw,
                       const void* b_dw, void* grad_t, void* grad_small, int N, int hid, int H, int W, int K) {
  auto ws = poisoned(eimn::cuda::sadffm::sadffm_gated_dwconv_workspace_elems(N, hid, H, W, K), dt);
  return eimn::cuda::sadffm::sadffm_gated_dwconv_backward(dtype_of(dt), grad_h, tg, b_in, w_dw, b_dw, grad_t, grad_small,
                                                    ws.data(), N, hid, H, W, K, nullptr);
}

int emu_dffm_forward(int dt, const void* yg, void* const* w, double eps, void* out, int N, int C, int R, int64_t HW) {
  auto ws = poisoned(eimn::cuda::sadffm::sadffm_dffm_out_workspace_elems(N, C, R, HW, false), dt);
  return eimn::cuda::sadffm::sadffm_dffm_out_forward(dtype_of(dt), yg, weights(w), eps, out, ws.data(), N, C, R, HW,
                                               nullptr);
}

int emu_dffm_backward(int dt, const void* go, const void* yg, void* const* w, double eps, void* grad_y,
                      void* grad_small, int N, int C, int R, int64_t HW) {
  auto ws = poisoned(eimn::cuda::sadffm::sadffm_dffm_out_workspace_elems(N, C, R, HW, true), dt);
  return eimn::cuda::sadffm::sadffm_dffm_out_backward(dtype_of(dt), go, yg, weights(w), eps, grad_y, grad_small,
                                                ws.data(), N, C, R, HW, nullptr);
}
}
