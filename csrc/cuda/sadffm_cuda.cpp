// ATen wrapper of the SADFFM CUDA kernels: eimn_C::gated_dwconv_{forward,backward}, eimn_C::dffm_out_{forward,backward}
// (schemas in csrc/eimn_ops.cpp). Checks inputs, does the 1x1 convolutions with cuBLAS (at::matmul, no bias; the
// kernels add the bias), allocates outputs and workspaces and calls the torch-free launchers of sadffm_kernels.cuh
// on the current stream. Dtypes: float32, float64, float16, bfloat16 (accumulation and weight-gradient reductions in
// float32, float64 for float64). Weight gradients are deterministic: fixed-order partial reductions in the kernels,
// cuBLAS GEMMs plus at::sum over the batch dimension (no atomics) for the 1x1 weights.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/sadffm_kernels.cuh"

namespace eimn::cuda::sadffm {
namespace {

DType sadffm_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(),
                  " (the CUDA backend supports float32, float64, float16 and bfloat16)");
  }
  return DType::kFloat32;
}

at::ScalarType sadffm_acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// t must be a CUDA tensor with the dtype and device of ref, `dim` dims (if dim >= 0).
void sadffm_check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the input has ", ref.scalar_type());
  if (dim >= 0) TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-d, got shape ", t.sizes());
}

void sadffm_check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
}

void sadffm_check_cuda(cudaError_t e, const char* op) {
  TORCH_CHECK(e == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(e),
              " (for cudaErrorInvalidConfiguration: the kernel size / channel count needs more shared memory than "
              "the device allows)");
}

// (N, C, H, W) -> (N, Cout, H*W) = W2d @ x, via cuBLAS.
at::Tensor sadffm_conv1x1(const at::Tensor& x, const at::Tensor& w) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  return at::matmul(w.reshape({w.size(0), C}), x.reshape({N, C, HW}));
}

// ----------------------------------------------------------------------------------------------- gated_dwconv
struct GatedDims {
  int64_t N, C, H, W, hid, K;
};

GatedDims sadffm_check_gated(const char* op, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
                             const at::Tensor& w_dw, const at::Tensor& b_dw) {
  sadffm_dtype(x, op);
  sadffm_check_tensor(op, "x", x, x, 4);
  sadffm_check_tensor(op, "w_in", w_in, x, 4);
  sadffm_check_tensor(op, "b_in", b_in, x, 1);
  sadffm_check_tensor(op, "w_dw", w_dw, x, 4);
  sadffm_check_tensor(op, "b_dw", b_dw, x, 1);
  GatedDims d{x.size(0), x.size(1), x.size(2), x.size(3), w_in.size(0) / 2, w_dw.size(3)};
  TORCH_CHECK(w_in.size(0) % 2 == 0, op, ": w_in must have an even number of output channels (2*hidden), got ",
              w_in.size(0));
  sadffm_check_shape(op, "w_in", w_in, {2 * d.hid, d.C, 1, 1});
  sadffm_check_shape(op, "b_in", b_in, {2 * d.hid});
  TORCH_CHECK(d.K % 2 == 1, op, ": w_dw must have an odd kernel size, got ", w_dw.sizes());
  sadffm_check_shape(op, "w_dw", w_dw, {2 * d.hid, 1, d.K, d.K});
  sadffm_check_shape(op, "b_dw", b_dw, {2 * d.hid});
  TORCH_CHECK(d.hid <= 65535 && d.N <= 65535, op, ": hidden (", d.hid, ") and batch (", d.N,
              ") must be <= 65535 (CUDA grid limit)");
  TORCH_CHECK(d.H <= INT32_MAX && d.W <= INT32_MAX && d.K <= 255, op, ": sizes out of range (H, W < 2^31, K <= 255)");
  return d;
}

// h = GELU(t[:, :hid]) * t[:, hid:], t = DW_K(W_in x + b_in) + b_dw. x: (N, C, H, W) -> h: (N, hid, H, W).
at::Tensor sadffm_gated_dwconv_forward_cuda(const at::Tensor& x_, const at::Tensor& w_in_, const at::Tensor& b_in_,
                                            const at::Tensor& w_dw_, const at::Tensor& b_dw_) {
  const char* op = "eimn_C::gated_dwconv_forward (CUDA)";
  const GatedDims d = sadffm_check_gated(op, x_, w_in_, b_in_, w_dw_, b_dw_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(),
                   w_dw = w_dw_.contiguous(), b_dw = b_dw_.contiguous();
  at::Tensor h = at::empty({d.N, d.hid, d.H, d.W}, x.options());
  if (h.numel() == 0) return h;
  const at::Tensor tg = sadffm_conv1x1(x, w_in).contiguous();  // cuBLAS: W_in x, bias added in the kernel
  sadffm_check_cuda(sadffm_gated_dwconv_forward(sadffm_dtype(x, op), tg.data_ptr(), b_in.data_ptr(),
                                                w_dw.data_ptr(), b_dw.data_ptr(), h.data_ptr(), int(d.N), int(d.hid),
                                                int(d.H), int(d.W), int(d.K),
                                                c10::cuda::getCurrentCUDAStream().stream()),
                    op);
  return h;
}

// Gradients (x, w_in, b_in, w_dw, b_dw) of gated_dwconv given grad_h: (N, hid, H, W).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sadffm_gated_dwconv_backward_cuda(
    const at::Tensor& grad_h_, const at::Tensor& x_, const at::Tensor& w_in_, const at::Tensor& b_in_,
    const at::Tensor& w_dw_, const at::Tensor& b_dw_) {
  const char* op = "eimn_C::gated_dwconv_backward (CUDA)";
  const GatedDims d = sadffm_check_gated(op, x_, w_in_, b_in_, w_dw_, b_dw_);
  sadffm_check_tensor(op, "grad_h", grad_h_, x_, 4);
  sadffm_check_shape(op, "grad_h", grad_h_, {d.N, d.hid, d.H, d.W});
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(),
                   w_dw = w_dw_.contiguous(), b_dw = b_dw_.contiguous(), grad_h = grad_h_.contiguous();
  const auto st = x.scalar_type(), acc = sadffm_acc_type(st);
  const at::TensorOptions acc_opts = x.options().dtype(acc);
  const int64_t HW = d.H * d.W, KK = d.K * d.K;
  at::Tensor grad_t = at::empty({d.N, 2 * d.hid, HW}, acc_opts);            // dL/d(W_in x + b_in)
  at::Tensor grad_small = at::empty({2 * d.hid, KK + 2}, acc_opts);          // [dW_dw (KK), db_dw, db_in]
  at::Tensor ws = at::empty(
      {static_cast<int64_t>(sadffm_gated_dwconv_workspace_elems(int(d.N), int(d.hid), int(d.H), int(d.W), int(d.K)))},
      acc_opts);
  const at::Tensor tg = d.N * HW > 0 ? sadffm_conv1x1(x, w_in).contiguous()
                                     : at::empty({d.N, 2 * d.hid, HW}, x.options());
  sadffm_check_cuda(sadffm_gated_dwconv_backward(sadffm_dtype(x, op), grad_h.data_ptr(), tg.data_ptr(),
                                                 b_in.data_ptr(), w_dw.data_ptr(), b_dw.data_ptr(), grad_t.data_ptr(),
                                                 grad_small.data_ptr(), ws.data_ptr(), int(d.N), int(d.hid),
                                                 int(d.H), int(d.W), int(d.K),
                                                 c10::cuda::getCurrentCUDAStream().stream()),
                    op);
  // cuBLAS, in the accumulation dtype: grad_x = W_in^T grad_t; grad_W_in = sum_n grad_t[n] x[n]^T.
  const at::Tensor w2 = w_in.reshape({2 * d.hid, d.C}).to(acc);
  at::Tensor grad_x = at::matmul(w2.t(), grad_t).reshape({d.N, d.C, d.H, d.W}).to(st);
  at::Tensor grad_w_in =
      at::matmul(grad_t, x.reshape({d.N, d.C, HW}).to(acc).transpose(1, 2)).sum(0).reshape({2 * d.hid, d.C, 1, 1});
  grad_w_in = grad_w_in.to(st, false, true);
  at::Tensor grad_w_dw = grad_small.narrow(1, 0, KK).to(st, false, true).contiguous().reshape({2 * d.hid, 1, d.K, d.K});
  at::Tensor grad_b_dw = grad_small.select(1, KK).to(st, false, true).contiguous();
  at::Tensor grad_b_in = grad_small.select(1, KK + 1).to(st, false, true).contiguous();
  return {grad_x, grad_w_in, grad_b_in, grad_w_dw, grad_b_dw};
}

// ----------------------------------------------------------------------------------------------- dffm_out
struct DffmDims {
  int64_t N, hid, H, W, C, R;
};

DffmDims sadffm_check_dffm(const char* op, const at::Tensor& h, const at::Tensor& w_out, const at::Tensor& b_out,
                           const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w_gr,
                           const at::Tensor& b_gr, const at::Tensor& w_lr, const at::Tensor& b_lr,
                           const at::Tensor& w_ce, const at::Tensor& b_ce, const at::Tensor& w_se,
                           const at::Tensor& b_se) {
  sadffm_dtype(h, op);
  sadffm_check_tensor(op, "h", h, h, 4);
  sadffm_check_tensor(op, "w_out", w_out, h, 4);
  sadffm_check_tensor(op, "w_gr", w_gr, h, 4);
  DffmDims d{h.size(0), h.size(1), h.size(2), h.size(3), w_out.size(0), w_gr.size(0)};
  sadffm_check_shape(op, "w_out", w_out, {d.C, d.hid, 1, 1});
  const std::pair<const char*, const at::Tensor*> vecs_c[] = {{"b_out", &b_out}, {"ln_w", &ln_w}, {"ln_b", &ln_b},
                                                              {"b_ce", &b_ce}};
  for (const auto& v : vecs_c) {
    sadffm_check_tensor(op, v.first, *v.second, h, 1);
    sadffm_check_shape(op, v.first, *v.second, {d.C});
  }
  sadffm_check_shape(op, "w_gr", w_gr, {d.R, d.C, 1, 1});
  sadffm_check_tensor(op, "b_gr", b_gr, h, 1);
  sadffm_check_shape(op, "b_gr", b_gr, {d.R});
  sadffm_check_tensor(op, "w_lr", w_lr, h, 4);
  sadffm_check_shape(op, "w_lr", w_lr, {d.R, d.C, 1, 1});
  sadffm_check_tensor(op, "b_lr", b_lr, h, 1);
  sadffm_check_shape(op, "b_lr", b_lr, {d.R});
  sadffm_check_tensor(op, "w_ce", w_ce, h, 4);
  sadffm_check_shape(op, "w_ce", w_ce, {d.C, d.R, 1, 1});
  sadffm_check_tensor(op, "w_se", w_se, h, 4);
  sadffm_check_shape(op, "w_se", w_se, {1, 2 * d.R, 1, 1});
  sadffm_check_tensor(op, "b_se", b_se, h, 1);
  sadffm_check_shape(op, "b_se", b_se, {1});
  TORCH_CHECK(d.C >= 1, op, ": w_out must have at least one output channel (LayerNorm over C channels)");
  TORCH_CHECK(d.N <= 65535, op, ": batch ", d.N, " must be <= 65535 (CUDA grid limit)");
  TORCH_CHECK(d.C <= INT32_MAX && d.R <= INT32_MAX, op, ": channel counts out of range");
  return d;
}

SadffmDffmWeights sadffm_weights(const at::Tensor& b_out, const at::Tensor& ln_w, const at::Tensor& ln_b,
                                 const at::Tensor& w_gr, const at::Tensor& b_gr, const at::Tensor& w_lr,
                                 const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce,
                                 const at::Tensor& w_se, const at::Tensor& b_se) {
  return SadffmDffmWeights{b_out.data_ptr(), ln_w.data_ptr(), ln_b.data_ptr(), w_gr.data_ptr(),
                           b_gr.data_ptr(),  w_lr.data_ptr(), b_lr.data_ptr(), w_ce.data_ptr(),
                           b_ce.data_ptr(),  w_se.data_ptr(), b_se.data_ptr()};
}

// y = W_out h + b_out; returns y * c * s (see reference.dffm_out). h: (N, hid, H, W) -> (N, C, H, W).
at::Tensor sadffm_dffm_out_forward_cuda(const at::Tensor& h_, const at::Tensor& w_out_, const at::Tensor& b_out_,
                                        const at::Tensor& ln_w_, const at::Tensor& ln_b_, const at::Tensor& w_gr_,
                                        const at::Tensor& b_gr_, const at::Tensor& w_lr_, const at::Tensor& b_lr_,
                                        const at::Tensor& w_ce_, const at::Tensor& b_ce_, const at::Tensor& w_se_,
                                        const at::Tensor& b_se_, double eps) {
  const char* op = "eimn_C::dffm_out_forward (CUDA)";
  const DffmDims d =
      sadffm_check_dffm(op, h_, w_out_, b_out_, ln_w_, ln_b_, w_gr_, b_gr_, w_lr_, b_lr_, w_ce_, b_ce_, w_se_, b_se_);
  const c10::cuda::CUDAGuard guard(h_.device());
  const at::Tensor h = h_.contiguous(), w_out = w_out_.contiguous(), b_out = b_out_.contiguous(),
                   ln_w = ln_w_.contiguous(), ln_b = ln_b_.contiguous(), w_gr = w_gr_.contiguous(),
                   b_gr = b_gr_.contiguous(), w_lr = w_lr_.contiguous(), b_lr = b_lr_.contiguous(),
                   w_ce = w_ce_.contiguous(), b_ce = b_ce_.contiguous(), w_se = w_se_.contiguous(),
                   b_se = b_se_.contiguous();
  at::Tensor out = at::empty({d.N, d.C, d.H, d.W}, h.options());
  if (out.numel() == 0) return out;
  const int64_t HW = d.H * d.W;
  const at::Tensor yg = sadffm_conv1x1(h, w_out).contiguous();  // cuBLAS: W_out h, bias added in the kernels
  at::Tensor ws = at::empty(
      {static_cast<int64_t>(sadffm_dffm_out_workspace_elems(int(d.N), int(d.C), int(d.R), HW, false))},
      h.options().dtype(sadffm_acc_type(h.scalar_type())));
  sadffm_check_cuda(
      sadffm_dffm_out_forward(sadffm_dtype(h, op), yg.data_ptr(),
                              sadffm_weights(b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se), eps,
                              out.data_ptr(), ws.data_ptr(), int(d.N), int(d.C), int(d.R), HW,
                              c10::cuda::getCurrentCUDAStream().stream()),
      op);
  return out;
}

using Grads13 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Gradients (h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se) given grad_out (N, C, H, W).
Grads13 sadffm_dffm_out_backward_cuda(const at::Tensor& grad_out_, const at::Tensor& h_, const at::Tensor& w_out_,
                                      const at::Tensor& b_out_, const at::Tensor& ln_w_, const at::Tensor& ln_b_,
                                      const at::Tensor& w_gr_, const at::Tensor& b_gr_, const at::Tensor& w_lr_,
                                      const at::Tensor& b_lr_, const at::Tensor& w_ce_, const at::Tensor& b_ce_,
                                      const at::Tensor& w_se_, const at::Tensor& b_se_, double eps) {
  const char* op = "eimn_C::dffm_out_backward (CUDA)";
  const DffmDims d =
      sadffm_check_dffm(op, h_, w_out_, b_out_, ln_w_, ln_b_, w_gr_, b_gr_, w_lr_, b_lr_, w_ce_, b_ce_, w_se_, b_se_);
  sadffm_check_tensor(op, "grad_out", grad_out_, h_, 4);
  sadffm_check_shape(op, "grad_out", grad_out_, {d.N, d.C, d.H, d.W});
  const c10::cuda::CUDAGuard guard(h_.device());
  const at::Tensor h = h_.contiguous(), w_out = w_out_.contiguous(), b_out = b_out_.contiguous(),
                   ln_w = ln_w_.contiguous(), ln_b = ln_b_.contiguous(), w_gr = w_gr_.contiguous(),
                   b_gr = b_gr_.contiguous(), w_lr = w_lr_.contiguous(), b_lr = b_lr_.contiguous(),
                   w_ce = w_ce_.contiguous(), b_ce = b_ce_.contiguous(), w_se = w_se_.contiguous(),
                   b_se = b_se_.contiguous(), grad_out = grad_out_.contiguous();
  const auto st = h.scalar_type(), acc = sadffm_acc_type(st);
  const at::TensorOptions acc_opts = h.options().dtype(acc);
  const int64_t HW = d.H * d.W;
  const SadffmDffmGradLayout lay{d.C, d.R};
  at::Tensor grad_y = at::empty({d.N, d.C, HW}, acc_opts);  // dL/dy, y = W_out h + b_out
  at::Tensor gs = at::empty({lay.total()}, acc_opts);
  at::Tensor ws = at::empty(
      {static_cast<int64_t>(sadffm_dffm_out_workspace_elems(int(d.N), int(d.C), int(d.R), HW, true))}, acc_opts);
  const at::Tensor yg = d.N * HW > 0 ? sadffm_conv1x1(h, w_out).contiguous()
                                     : at::empty({d.N, d.C, HW}, h.options());
  sadffm_check_cuda(
      sadffm_dffm_out_backward(sadffm_dtype(h, op), grad_out.data_ptr(), yg.data_ptr(),
                               sadffm_weights(b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se), eps,
                               grad_y.data_ptr(), gs.data_ptr(), ws.data_ptr(), int(d.N), int(d.C), int(d.R), HW,
                               c10::cuda::getCurrentCUDAStream().stream()),
      op);
  // cuBLAS, in the accumulation dtype: grad_h = W_out^T grad_y; grad_W_out = sum_n grad_y[n] h[n]^T.
  const at::Tensor w2 = w_out.reshape({d.C, d.hid}).to(acc);
  at::Tensor grad_h = at::matmul(w2.t(), grad_y).reshape({d.N, d.hid, d.H, d.W}).to(st);
  at::Tensor grad_w_out = at::matmul(grad_y, h.reshape({d.N, d.hid, HW}).to(acc).transpose(1, 2))
                              .sum(0)
                              .reshape({d.C, d.hid, 1, 1})
                              .to(st, false, true);
  auto take = [&](int64_t off, int64_t len, at::IntArrayRef shape) {
    return gs.narrow(0, off, len).to(st, false, true).reshape(shape);
  };
  const int64_t C = d.C, R = d.R;
  at::Tensor g_w_se = at::cat({gs.narrow(0, lay.w_se_local(), R), gs.narrow(0, lay.w_se_global(), R)})
                          .to(st, false, true)
                          .reshape({1, 2 * R, 1, 1});
  return {grad_h,
          grad_w_out,
          take(lay.b_out(), C, {C}),
          take(lay.ln_w(), C, {C}),
          take(lay.ln_b(), C, {C}),
          take(lay.w_gr(), R * C, {R, C, 1, 1}),
          take(lay.b_gr(), R, {R}),
          take(lay.w_lr(), R * C, {R, C, 1, 1}),
          take(lay.b_lr(), R, {R}),
          take(lay.w_ce(), C * R, {C, R, 1, 1}),
          take(lay.b_ce(), C, {C}),
          g_w_se,
          take(lay.b_se(), 1, {1})};
}

}  // namespace
}  // namespace eimn::cuda::sadffm

TORCH_LIBRARY_IMPL(eimn_C, CUDA, m) {
  m.impl("gated_dwconv_forward", &eimn::cuda::sadffm::sadffm_gated_dwconv_forward_cuda);
  m.impl("gated_dwconv_backward", &eimn::cuda::sadffm::sadffm_gated_dwconv_backward_cuda);
  m.impl("dffm_out_forward", &eimn::cuda::sadffm::sadffm_dffm_out_forward_cuda);
  m.impl("dffm_out_backward", &eimn::cuda::sadffm::sadffm_dffm_out_backward_cuda);
}
