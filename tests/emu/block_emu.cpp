// CPU emulation harness of the NHWC block kernels (csrc/cuda/block_*_kernels.cu, float32 only: the half types need
// the CUDA headers), driven by tests/test_cuda_block_emu.py through ctypes. Every input is copied into an exactly
// sized std::vector, so an AddressSanitizer build reports any out-of-bounds access; the workspace is poisoned with
// NaN, so a value read before it is written shows up in the result.
#define EIMN_CUDA_EMU 1
#include "cuda/block_molrcm_kernels.cu"
#include "cuda/block_sadffm_kernels.cu"

#include <cmath>
#include <vector>

using eimn::DType;
namespace blk = eimn::cuda::block;

namespace {
constexpr int kActs = 7, kFloats = 27;  // BlockWeights: 7 activation-dtype pointers, then 27 float pointers
}

extern "C" {

void emu_set_smem_limit(int bytes) { emu::smem_limit = bytes; }
int emu_max_smem_used() { return static_cast<int>(emu::max_smem_used); }

// x: [N, H, W, 64] float32; w / numel: the 34 weight tensors in BlockWeights order (norm_w / norm_b numel 0: no
// LayerNorm); tf32x3: 3xTF32 float32 GEMMs (else one TF32 product); out: [N, H, W, 64]; inter (may be null): r, a, y [N, H, W, 64] each, then a_loc [N*H*W].
int emu_block_forward(int64_t N, int64_t H, int64_t W, const float* x, const float* const* w, const int64_t* numel,
                      float eps, float norm_eps, int tf32x3, float* out, float* inter) {
  std::vector<std::vector<float>> ws(kActs + kFloats);
  for (int i = 0; i < kActs + kFloats; ++i) ws[i].assign(w[i], w[i] + numel[i]);
  auto at = [&](int i) -> const float* { return ws[i].empty() ? nullptr : ws[i].data(); };
  blk::BlockWeights bw{};
  const void** acts[kActs] = {&bw.wq_t, &bw.wf_t, &bw.wv_t, &bw.wo_t, &bw.win_t, &bw.wout_t, &bw.wlr_t};
  for (int i = 0; i < kActs; ++i) *acts[i] = at(i);
  const float** fl[kFloats] = {&bw.bq, &bw.w0, &bw.b0, &bw.w1, &bw.b1, &bw.w2, &bw.b2, &bw.bf, &bw.bv,
                               &bw.bo, &bw.b_in, &bw.w_dw, &bw.b_dw, &bw.b_out, &bw.ln_w, &bw.ln_b, &bw.b_lr,
                               &bw.w_sl, &bw.w_gr, &bw.b_gr, &bw.w_ce, &bw.b_ce, &bw.w_sg, &bw.b_se, &bw.ls2,
                               &bw.norm_w, &bw.norm_b};
  for (int i = 0; i < kFloats; ++i) *fl[i] = at(kActs + i);
  bw.eps = eps;
  bw.norm_eps = norm_eps;
  bw.tf32x3 = tf32x3 != 0;
  const int64_t act = N * H * W * blk::kC;
  std::vector<float> xv(x, x + act), o(static_cast<size_t>(act));
  std::vector<float> work(blk::block_workspace_bytes(N, H, W, DType::kFloat32) / sizeof(float), NAN);
  const int e = blk::block_forward(N, H, W, DType::kFloat32, bw, xv.data(), o.data(), work.data(), nullptr);
  std::copy(o.begin(), o.end(), out);
  if (inter != nullptr) {  // the workspace's first three regions are r, a, y (256-byte aligned), then a_loc
    const size_t stride = (static_cast<size_t>(act) * 4 + 255) / 256 * 256 / 4;
    for (int k = 0; k < 3; ++k) std::copy(work.begin() + k * stride, work.begin() + k * stride + act, inter + k * act);
    std::copy(work.begin() + 3 * stride, work.begin() + 3 * stride + N * H * W, inter + 3 * act);
  }
  return e;
}
}
