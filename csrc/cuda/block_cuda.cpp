// ATen wrapper of the CUDA NHWC block kernels: eimn_C::nhwc_block_forward (schema in csrc/eimn_ops.cpp). Checks the
// input and the 34 packed weights (eimn_kernels.nhwc.CUDA_WEIGHTS order, as triton_kernels/block_pack.py packs
// them, then the LayerNorm's weight and bias or two empty tensors), allocates the output and a workspace and runs
// the five stages (block_kernels.cuh) on the current stream. Inference only: no autograd formula is registered.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>

#include "cuda/block_kernels.cuh"

namespace eimn::cuda::block {
namespace {

constexpr int kActWeights = 7, kWeights = 34;

// numel of each packed weight, CUDA_WEIGHTS order; the last two (the LayerNorm after the block) may be empty
constexpr std::array<int64_t, kWeights> kNumel = {
    kC * kC, kC * kC, kC * kC, kC * kC, kC * 2 * kHid, kHid * kC, kC * kR,   // wq_t wf_t wv_t wo_t win_t wout_t wlr_t
    kC, 25 * kC, kC, 25 * 32, 32, 49 * 32, 32,                              // bq w0 b0 w1 b1 w2 b2
    kC, kC, kC, 2 * kHid, 9 * 2 * kHid, 2 * kHid, kC,                       // bf bv bo b_in w_dw b_dw b_out
    kC, kC, kR, kR, kR * kC, kR, kC * kR, kC, kR, 1, kC,                    // ln_w ln_b b_lr w_sl w_gr b_gr w_ce b_ce w_sg b_se ls2
    kC, kC};                                                                 // norm_w norm_b

DType block_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, "nhwc_block_forward: dtype ", x.scalar_type(), " (float32, float16 or bfloat16 expected)");
  }
  return DType::kFloat32;
}

at::Tensor nhwc_block_forward(const at::Tensor& x, at::TensorList w, double eps, double norm_eps, bool tf32x3) {
  TORCH_CHECK(x.is_cuda(), "nhwc_block_forward: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4 && x.size(3) == kC && x.is_contiguous(),
              "nhwc_block_forward: x must be NHWC contiguous [N, H, W, ", kC, "], got ", x.sizes());
  const DType dt = block_dtype(x);
  TORCH_CHECK(static_cast<int64_t>(w.size()) == kWeights, "nhwc_block_forward: ", kWeights, " weights expected, got ",
              w.size());
  for (int i = 0; i < kWeights; ++i) {
    const at::Tensor& t = w[i];
    const bool optional = i >= kWeights - 2;
    if (optional && t.numel() == 0) continue;
    TORCH_CHECK(t.device() == x.device() && t.is_contiguous(), "nhwc_block_forward: weight ", i,
                " must be contiguous on ", x.device());
    TORCH_CHECK(t.scalar_type() == (i < kActWeights ? x.scalar_type() : at::kFloat), "nhwc_block_forward: weight ", i,
                " has dtype ", t.scalar_type());
    TORCH_CHECK(t.numel() == kNumel[i], "nhwc_block_forward: weight ", i, " has ", t.numel(), " elements, ",
                kNumel[i], " expected (the CUDA block kernels take EIMN's dim 64 layers)");
  }
  TORCH_CHECK((w[kWeights - 2].numel() == 0) == (w[kWeights - 1].numel() == 0),
              "nhwc_block_forward: the LayerNorm's weight and bias are both given or both empty");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2);
  if (x.numel() == 0) return out;
  at::Tensor ws = at::empty({static_cast<int64_t>(block_workspace_bytes(N, H, W, dt))}, x.options().dtype(at::kByte));
  auto f = [&](int i) { return w[i].numel() ? w[i].data_ptr<float>() : nullptr; };
  BlockWeights bw{};
  bw.wq_t = w[0].data_ptr(); bw.wf_t = w[1].data_ptr(); bw.wv_t = w[2].data_ptr(); bw.wo_t = w[3].data_ptr();
  bw.win_t = w[4].data_ptr(); bw.wout_t = w[5].data_ptr(); bw.wlr_t = w[6].data_ptr();
  bw.bq = f(7); bw.w0 = f(8); bw.b0 = f(9); bw.w1 = f(10); bw.b1 = f(11); bw.w2 = f(12); bw.b2 = f(13);
  bw.bf = f(14); bw.bv = f(15); bw.bo = f(16); bw.b_in = f(17); bw.w_dw = f(18); bw.b_dw = f(19); bw.b_out = f(20);
  bw.ln_w = f(21); bw.ln_b = f(22); bw.b_lr = f(23); bw.w_sl = f(24); bw.w_gr = f(25); bw.b_gr = f(26);
  bw.w_ce = f(27); bw.b_ce = f(28); bw.w_sg = f(29); bw.b_se = f(30); bw.ls2 = f(31);
  bw.norm_w = f(32); bw.norm_b = f(33);
  bw.eps = static_cast<float>(eps);
  bw.norm_eps = static_cast<float>(norm_eps);
  bw.tf32x3 = tf32x3;
  const cudaError_t e = block_forward(N, H, W, dt, bw, x.data_ptr(), out.data_ptr(), ws.data_ptr(),
                                      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "nhwc_block_forward: ", cudaGetErrorString(e));
  return out;
}

}  // namespace
}  // namespace eimn::cuda::block

TORCH_LIBRARY_IMPL(eimn_C, CUDA, m) {
  m.impl("nhwc_block_forward", &eimn::cuda::block::nhwc_block_forward);
}
