// Schemas of the eimn_C ops: one definition, implemented per device by
//   csrc/cpu/*_cpu.cpp   (register_<group>(m) per ISA level; csrc/cpu/cpu_dispatch.cpp registers one level for CPU)
//   csrc/cuda/*_cuda.cpp (TORCH_LIBRARY_IMPL(eimn_C, CUDA, m)), launching csrc/cuda/*.cu kernels.
// Python wraps them as autograd-aware custom ops in eimn_kernels/ops/.
// All image tensors are contiguous NCHW; weights have conv shapes (Cout, Cin, 1, 1) / (C, 1, K, K).
#include <torch/library.h>
#include <Python.h>

#include "cpu/cpu_gemm_bf16.h"
#include "cpu/cpu_pool.h"
#include "cpu/cpu_register.h"

namespace eimn {
bool built_with_cuda() {
#ifdef EIMN_WITH_CUDA
  return true;
#else
  return false;
#endif
}
std::vector<int64_t> cpu_pool_stats() { return cpu::pool().stats(); }
void cpu_pool_clear() { cpu::pool().clear(); }
std::string cpu_bf16_engine() { return cpu::bf16::available() ? "avx512_bf16" : ""; }
}  // namespace eimn

TORCH_LIBRARY(eimn_C, m) {
  m.def("built_with_cuda() -> bool", &eimn::built_with_cuda);
  // The CPU kernels' cache of freed large buffers (csrc/cpu/cpu_pool.h): [cached bytes, cached blocks, hits,
  // misses, cap bytes], and freeing every cached block.
  m.def("cpu_pool_stats() -> int[]", &eimn::cpu_pool_stats);
  m.def("cpu_pool_clear() -> ()", &eimn::cpu_pool_clear);
  // The engine of the CPU ops' bfloat16 GEMMs on this CPU (csrc/cpu/cpu_gemm_bf16.h): "avx512_bf16", or "" (none).
  m.def("cpu_bf16_engine() -> str", &eimn::cpu_bf16_engine);
  // The ISA level the CPU kernels run at (csrc/cpu/cpu_dispatch.cpp): [level or "", why none, levels built, forced].
  m.def("cpu_isa() -> str[]", &eimn::cpu::cpu_isa);
  // MOLRCM spatial mixing: y = cat(DW1(r[:c1]), r[c1:c1+c2], DW2(r[c1+c2:])), r = DW0(q).
  m.def("dw_mix_forward(Tensor q, Tensor w0, Tensor b0, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "int c1, int c2, int d0, int d1, int d2) -> Tensor");
  m.def("dw_mix_backward(Tensor grad_y, Tensor q, Tensor w0, Tensor b0, Tensor w1, Tensor b1, Tensor w2, "
        "Tensor b2, int c1, int c2, int d0, int d1, int d2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // MOLRCM projections: q = GELU(Wq x + bq), v = Wv x + bv.
  m.def("proj_qv_forward(Tensor x, Tensor wq, Tensor bq, Tensor wv, Tensor bv) -> (Tensor, Tensor)");
  m.def("proj_qv_backward(Tensor grad_q, Tensor grad_v, Tensor x, Tensor wq, Tensor bq, Tensor wv, Tensor bv) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // MOLRCM gating: out = Wo (SiLU(Wf y + bf) * v) + bo.
  m.def("gate_out_forward(Tensor y, Tensor v, Tensor wf, Tensor bf, Tensor wo, Tensor bo) -> Tensor");
  m.def("gate_out_backward(Tensor grad_out, Tensor y, Tensor v, Tensor wf, Tensor bf, Tensor wo, Tensor bo) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // SADFFM front: h = GELU(t[:hid]) * t[hid:], t = DW_K(W_in x + b_in).
  m.def("gated_dwconv_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw) -> Tensor");
  m.def("gated_dwconv_backward(Tensor grad_h, Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same keeping U = W_in x + b_in for the backward (training; CPU): an opaque 1-d stash that
  // gated_dwconv_backward_stash reads instead of recomputing that GEMM.
  m.def("gated_dwconv_forward_stash(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw) -> (Tensor, Tensor)");
  m.def("gated_dwconv_backward_stash(Tensor grad_h, Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, "
        "Tensor stash) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // SADFFM back: y = W_out h + b_out; DFFM gate y * c * s.
  m.def("dffm_out_forward(Tensor h, Tensor w_out, Tensor b_out, Tensor ln_w, Tensor ln_b, Tensor w_gr, "
        "Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, Tensor b_ce, Tensor w_se, Tensor b_se, float eps) -> Tensor");
  m.def("dffm_out_backward(Tensor grad_out, Tensor h, Tensor w_out, Tensor b_out, Tensor ln_w, Tensor ln_b, "
        "Tensor w_gr, Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, Tensor b_ce, Tensor w_se, Tensor b_se, "
        "float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor)");
  // The same with the forward's intermediates kept for the backward (training; CPU): an opaque 1-d stash that
  // dffm_out_backward_stash reads instead of recomputing y = W_out h.
  m.def("dffm_out_forward_stash(Tensor h, Tensor w_out, Tensor b_out, Tensor ln_w, Tensor ln_b, Tensor w_gr, "
        "Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, Tensor b_ce, Tensor w_se, Tensor b_se, float eps) "
        "-> (Tensor, Tensor)");
  m.def("dffm_out_backward_stash(Tensor grad_out, Tensor h, Tensor w_out, Tensor b_out, Tensor ln_w, Tensor ln_b, "
        "Tensor w_gr, Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, Tensor b_ce, Tensor w_se, Tensor b_se, "
        "Tensor stash, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor)");
  // Channel LayerNorm of an NCHW image (EIMN's LayerNorm between blocks): y = (x - mean_C x) * rstd * w + b,
  // the statistics over the channels of each pixel. The _stash variants keep mean and rstd (N x H x W each).
  m.def("channel_layer_norm_forward(Tensor x, Tensor w, Tensor b, float eps) -> Tensor");
  m.def("channel_layer_norm_forward_stash(Tensor x, Tensor w, Tensor b, float eps) -> (Tensor, Tensor)");
  m.def("channel_layer_norm_backward(Tensor grad_y, Tensor x, Tensor w, Tensor b, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("channel_layer_norm_backward_stash(Tensor grad_y, Tensor x, Tensor w, Tensor b, Tensor stash, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  // 1x1 convolution with its epilogue: out = act(W x + b) [* gate] [+ residual], act 0 identity / 1 GELU; gate and
  // residual (N, Co, H, W) or empty tensors (absent). Large-kernel attention (VAN's LKA) is built from it and dw_mix.
  m.def("conv1x1_forward(Tensor x, Tensor w, Tensor b, Tensor gate, Tensor residual, int act) -> Tensor");
  m.def("conv1x1_backward(Tensor grad_out, Tensor x, Tensor w, Tensor b, Tensor gate, Tensor residual, int act) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // 'Same' 3x3 convolution (stride 1, padding 1) with its output pixel-shuffled by r (1: none), forward only
  // (inference; CPU): an SR network's tail conv and upsampler in one pass. w (Co, C, 3, 3), Co divisible by r * r.
  m.def("conv3x3_shuffle_forward(Tensor x, Tensor w, Tensor b, int r) -> Tensor");
  // Whole SADFFM layer, forward only (inference; CPU): dffm_out(gated_dwconv(x)) without writing h. With ls (C):
  // the EIMN block's tail in the same pass, x + ls * SADFFM(x), then with norm_w / norm_b (C) the channel LayerNorm
  // after the block (norm_eps).
  m.def("sadffm_infer_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out, "
        "Tensor b_out, Tensor ln_w, Tensor ln_b, Tensor w_gr, Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, "
        "Tensor b_ce, Tensor w_se, Tensor b_se, float eps, bool bf16=False, Tensor? ls=None, Tensor? norm_w=None, "
        "Tensor? norm_b=None, float norm_eps=1e-5) -> Tensor");
  // Whole MOLRCM layer, forward only (inference; CPU): gate_out(dw_mix(proj_qv(x))) [+ residual] in one call.
  // bf16 (here and in sadffm_infer_forward): the 1x1 GEMMs in bfloat16 with float32 sums (float32 tensors,
  // AVX512-BF16 CPUs).
  m.def("molrcm_infer_forward(Tensor x, Tensor wq, Tensor bq, Tensor wv, Tensor bv, Tensor w0, Tensor b0, "
        "Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor wf, Tensor bf, Tensor wo, Tensor bo, int c1, int c2, "
        "int d0, int d1, int d2, bool bf16, Tensor? residual=None) -> Tensor");
  // Whole SADFFM layer for training (CPU): (out, stash) with h kept only in the GEMM's packed layout inside the
  // stash; the backward returns the gradients of x and of the 16 weights, in argument order.
  m.def("sadffm_forward_stash(Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, Tensor w_out, "
        "Tensor b_out, Tensor ln_w, Tensor ln_b, Tensor w_gr, Tensor b_gr, Tensor w_lr, Tensor b_lr, Tensor w_ce, "
        "Tensor b_ce, Tensor w_se, Tensor b_se, float eps) -> (Tensor, Tensor)");
  m.def("sadffm_backward_stash(Tensor grad_out, Tensor x, Tensor w_in, Tensor b_in, Tensor w_dw, Tensor b_dw, "
        "Tensor w_out, Tensor b_out, Tensor ln_w, Tensor ln_b, Tensor w_gr, Tensor b_gr, Tensor w_lr, Tensor b_lr, "
        "Tensor w_ce, Tensor b_ce, Tensor w_se, Tensor b_se, Tensor stash, float eps) -> Tensor[]");
  // One folded EIMN block and the LayerNorm after it on NHWC activations, inference (CUDA: csrc/cuda/block_*):
  // x [N, H, W, 64] -> the same; w: the 34 packed weights (eimn_kernels.nhwc.CUDA_WEIGHTS, norm last or empty).
  // tf32x3: float32 GEMMs as 3xTF32 (else one TF32 product).
  m.def("nhwc_block_forward(Tensor x, Tensor[] w, float eps, float norm_eps, bool tf32x3) -> Tensor");
  // The convolutional MLP of VAN-style blocks, inference (CPU): W_2 GELU(DW(W_1 x + b_1)) + b_2 [+ x], the hidden
  // channels never in memory (csrc/cpu/sadffm_convmlp.h).
  m.def("convmlp_infer_forward(Tensor x, Tensor w1, Tensor b1, Tensor w_dw, Tensor b_dw, Tensor w2, Tensor b2, "
        "bool add_input) -> Tensor");
}

// Importable as eimn_kernels._C (registration happens at load time).
static struct PyModuleDef eimn_c_module = {PyModuleDef_HEAD_INIT, "_C", "eimn-kernels compiled ops", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&eimn_c_module); }
