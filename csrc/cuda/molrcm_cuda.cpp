// CUDA implementations of the MOLRCM eimn_C ops (schemas in csrc/eimn_ops.cpp): a thin ATen wrapper.
//
// It checks inputs (device, dtype, contiguity, shapes), allocates outputs and workspaces, takes the current
// stream and calls the torch-free launchers of csrc/cuda/molrcm_kernels.cu.
//   dw_mix:  fused tiled kernels (molrcm_kernels.cu), weight gradients reduced deterministically there.
//   proj_qv, gate_out: the 1x1 convolutions are batched GEMMs in cuBLAS through ATen (at::bmm over the batch,
//     (Cout, Cin) x (Cin, H*W)); half/bfloat16 GEMMs that feed an epilogue or a weight gradient return fp32
//     (at::bmm(..., out_dtype=float): fp32 accumulation, no intermediate rounding). Bias, GELU, SiLU gating and
//     their derivatives run in fused epilogue kernels of molrcm_kernels.cu. Weight gradients are
//     sum_n G[n] x[n]^T: one GEMM per image (fp32 output for half inputs) summed over n by at::sum:
//     deterministic (cuBLAS and ATen reductions have no run-to-run order changes; no atomics).
//   fp32 GEMMs follow torch.backends.cuda.matmul.allow_tf32 (default False: full fp32).
// Dtypes: float32, float64, float16, bfloat16; all tensors of one call share dtype and device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda/molrcm_kernels.cuh"

namespace eimn::cuda::molrcm {
namespace {

using at::Tensor;

DType dtype_of(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(),
                  " (the CUDA kernels take float32, float64, float16 or bfloat16)");
  }
  return DType::kFloat32;  // unreachable
}

at::ScalarType acc_scalar(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// t must be a contiguous CUDA tensor on ref's device with ref's dtype, of the given shape (-1: any size).
void check_tensor(const char* op, const char* name, const Tensor& t, const Tensor& ref,
                  std::vector<int64_t> shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", the input on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              ", the input has ", ref.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (NCHW); call .contiguous() first");
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || t.size(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    TORCH_CHECK(false, op, ": ", name, " must have shape ", want, "), got ", t.sizes());
  }
}

// The input image: a 4-d contiguous CUDA tensor of a supported dtype.
void check_image(const char* op, const char* name, const Tensor& x) {
  TORCH_CHECK(x.defined() && x.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ",
              x.defined() ? x.device().str() : std::string("undefined"));
  dtype_of(x, op);
  check_tensor(op, name, x, x, {-1, -1, -1, -1});
}

// Odd square depthwise kernel size of w: (rows, 1, K, K).
int odd_kernel(const char* op, const char* name, const Tensor& w) {
  TORCH_CHECK(w.dim() == 4 && w.size(1) == 1 && w.size(2) == w.size(3) && w.size(2) % 2 == 1, op, ": ", name,
              " must be a depthwise weight (channels, 1, K, K) with odd K, got ", w.sizes());
  TORCH_CHECK(w.size(2) <= 1023, op, ": ", name, " kernel size ", w.size(2), " is too large");
  return static_cast<int>(w.size(2));
}

cudaStream_t stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

// ---------------------------------------------- dw_mix -----------------------------------------

DwMixShape dw_mix_shape(const char* op, const Tensor& q, const Tensor& w0, const Tensor& b0,
                              const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, int64_t c1,
                              int64_t c2, int64_t d0, int64_t d1, int64_t d2) {
  check_image(op, "q", q);
  const int64_t C = q.size(1);
  TORCH_CHECK(c1 >= 0 && c2 >= 0 && c1 + c2 <= C, op, ": channel split c1=", c1, ", c2=", c2, " does not fit ",
              C, " channels");
  const int64_t c3 = C - c1 - c2;
  DwMixShape s;
  s.N = q.size(0); s.C = C; s.H = q.size(2); s.W = q.size(3); s.c1 = c1; s.c2 = c2;
  s.K0 = odd_kernel(op, "w0", w0);
  s.K1 = odd_kernel(op, "w1", w1);
  s.K2 = odd_kernel(op, "w2", w2);
  check_tensor(op, "w0", w0, q, {C, 1, s.K0, s.K0});
  check_tensor(op, "b0", b0, q, {C});
  check_tensor(op, "w1", w1, q, {c1, 1, s.K1, s.K1});
  check_tensor(op, "b1", b1, q, {c1});
  check_tensor(op, "w2", w2, q, {c3, 1, s.K2, s.K2});
  check_tensor(op, "b2", b2, q, {c3});
  for (int64_t d : {d0, d1, d2}) TORCH_CHECK(d >= 1 && d <= 4096, op, ": dilations must be in [1, 4096], got ", d);
  s.d0 = static_cast<int>(d0); s.d1 = static_cast<int>(d1); s.d2 = static_cast<int>(d2);
  return s;
}

DwMixPlan dw_mix_plan_checked(const char* op, const DwMixShape& s, const Tensor& q, bool backward) {
  const DwMixPlan p = dw_mix_plan(s, dtype_of(q, op), backward, q.get_device());
  TORCH_CHECK(p.ok, op, ": ", p.why, " (K0=", s.K0, " d0=", s.d0, ", K1=", s.K1, " d1=", s.d1, ", K2=", s.K2,
              " d2=", s.d2, ", dtype ", q.scalar_type(), ")");
  return p;
}

// y = cat(DW_{K1,d1}(r[:c1]), r[c1:c1+c2], DW_{K2,d2}(r[c1+c2:])), r = DW_{K0,d0}(q). q: (N,C,H,W) -> y same.
Tensor dw_mix_forward_cuda(const Tensor& q, const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1,
                           const Tensor& w2, const Tensor& b2, int64_t c1, int64_t c2, int64_t d0, int64_t d1,
                           int64_t d2) {
  const char* op = "eimn_C::dw_mix_forward (CUDA)";
  const DwMixShape s = dw_mix_shape(op, q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2);
  c10::cuda::CUDAGuard guard(q.device());
  Tensor y = at::empty_like(q);
  if (q.numel() == 0) return y;
  const DwMixPlan p = dw_mix_plan_checked(op, s, q, false);
  C10_CUDA_CHECK(dw_mix_forward(s, p, dtype_of(q, op), q.data_ptr(), w0.data_ptr(), b0.data_ptr(),
                                      w1.data_ptr(), b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), y.data_ptr(),
                                      stream_of(q)));
  return y;
}

// Gradients (grad_q, grad_w0, grad_b0, grad_w1, grad_b1, grad_w2, grad_b2) of dw_mix; grad_y like q.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dw_mix_backward_cuda(
    const Tensor& grad_y, const Tensor& q, const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1,
    const Tensor& w2, const Tensor& b2, int64_t c1, int64_t c2, int64_t d0, int64_t d1, int64_t d2) {
  const char* op = "eimn_C::dw_mix_backward (CUDA)";
  const DwMixShape s = dw_mix_shape(op, q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2);
  check_tensor(op, "grad_y", grad_y, q, q.sizes().vec());
  c10::cuda::CUDAGuard guard(q.device());
  Tensor gq = at::empty_like(q);
  Tensor gw0 = at::empty_like(w0), gb0 = at::empty_like(b0);
  Tensor gw1 = at::empty_like(w1), gb1 = at::empty_like(b1);
  Tensor gw2 = at::empty_like(w2), gb2 = at::empty_like(b2);
  if (q.numel() == 0) {
    for (Tensor* t : {&gq, &gw0, &gb0, &gw1, &gb1, &gw2, &gb2}) t->zero_();
    return {gq, gw0, gb0, gw1, gb1, gw2, gb2};
  }
  const DwMixPlan p = dw_mix_plan_checked(op, s, q, true);
  const int64_t c3 = s.C - s.c1 - s.c2;
  const auto acc = q.options().dtype(acc_scalar(q));
  Tensor ws0 = at::empty({s.C * p.partials * (s.K0 * s.K0 + 1)}, acc);
  Tensor ws1 = at::empty({s.c1 * p.partials * (s.K1 * s.K1 + 1)}, acc);
  Tensor ws2 = at::empty({c3 * p.partials * (s.K2 * s.K2 + 1)}, acc);
  C10_CUDA_CHECK(dw_mix_backward(s, p, dtype_of(q, op), grad_y.data_ptr(), q.data_ptr(), w0.data_ptr(),
                                       b0.data_ptr(), w1.data_ptr(), w2.data_ptr(), gq.data_ptr(), gw0.data_ptr(),
                                       gb0.data_ptr(), gw1.data_ptr(), gb1.data_ptr(), gw2.data_ptr(),
                                       gb2.data_ptr(), ws0.data_ptr(), ws1.data_ptr(), ws2.data_ptr(),
                                       stream_of(q)));
  return {gq, gw0, gb0, gw1, gb1, gw2, gb2};
}

// ------------------------------------------ 1x1 GEMMs ------------------------------------------

// (Cout, Cin, 1, 1) weight as a (N, Cout, Cin) batch (transposed: (N, Cin, Cout)), materialized for cuBLAS.
Tensor batch_weight(const Tensor& w, int64_t N, bool transpose) {
  Tensor m = w.view({w.size(0), w.size(1)});
  if (transpose) m = m.t();
  return m.unsqueeze(0).expand({N, m.size(0), m.size(1)}).contiguous();
}

// Batched a @ b with the result in the accumulation dtype (fp32 for half/bfloat16: cuBLAS accumulates in fp32
// and the result is not rounded to half).
Tensor gemm_acc(const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16) {
    try {
      return at::bmm(a, b, at::kFloat);  // aten::bmm.dtype (CUDA): fp16/bf16 inputs, fp32 output
    } catch (const c10::Error& e) {
      // Not expected with torch >= 2.8; an fp32 GEMM of upcast copies gives the same result, slower.
      TORCH_WARN_ONCE("eimn_C (CUDA): at::bmm with out_dtype=float failed (", e.what_without_backtrace(),
                      "); falling back to an fp32 GEMM of upcast operands");
      return at::bmm(a.to(at::kFloat), b.to(at::kFloat));
    }
  }
  return at::bmm(a, b);
}

// Weight gradient sum_n G[n] @ X[n]^T, G: (N, Co, HW), X: (N, Ci, HW) -> (Co, Ci) in the acc dtype.
Tensor weight_grad(const Tensor& G, const Tensor& X) { return gemm_acc(G, X.transpose(1, 2)).sum(0); }

// Bias gradient sum over (n, hw) of G: (N, Co, HW) -> (Co,) in the acc dtype.
Tensor bias_grad(const Tensor& G) {
  // Explicit IntArrayRef / optional dtype: a braced list is ambiguous between sum's overloads in torch 2.11.
  const std::vector<int64_t> dims{0, 2};
  return at::sum(G, at::IntArrayRef(dims), false, std::optional<at::ScalarType>(acc_scalar(G)));
}

void check_1x1(const char* op, const char* wname, const Tensor& w, const char* bname, const Tensor& b,
               const Tensor& x, int64_t cin) {
  check_tensor(op, wname, w, x, {-1, cin, 1, 1});
  check_tensor(op, bname, b, x, {w.size(0)});
}

// The arguments shared by proj_qv forward and backward: the image x and both 1x1 convolutions on its C channels.
void check_proj_qv(const char* op, const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wv,
                   const Tensor& bv) {
  check_image(op, "x", x);
  check_1x1(op, "wq", wq, "bq", bq, x, x.size(1));
  check_1x1(op, "wv", wv, "bv", bv, x, x.size(1));
}

// The arguments shared by gate_out forward and backward: y, v of y's shape, the C x C fusion and the out conv.
void check_gate_out(const char* op, const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf,
                    const Tensor& wo, const Tensor& bo) {
  check_image(op, "y", y);
  const int64_t C = y.size(1);
  check_tensor(op, "v", v, y, y.sizes().vec());
  check_tensor(op, "wf", wf, y, {C, C, 1, 1});
  check_tensor(op, "bf", bf, y, {C});
  check_1x1(op, "wo", wo, "bo", bo, y, C);
}

// (q, v) = (GELU(Wq x + bq), Wv x + bv). x: (N, C, H, W); wq: (Cq, C, 1, 1); wv: (Cv, C, 1, 1).
std::tuple<Tensor, Tensor> proj_qv_forward_cuda(const Tensor& x, const Tensor& wq, const Tensor& bq,
                                                const Tensor& wv, const Tensor& bv) {
  const char* op = "eimn_C::proj_qv_forward (CUDA)";
  check_proj_qv(op, x, wq, bq, wv, bv);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Cq = wq.size(0), Cv = wv.size(0);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor q = at::empty({N, Cq, H, W}, x.options()), v = at::empty({N, Cv, H, W}, x.options());
  if (N * HW == 0 || Cq + Cv == 0) return {q, v};
  const Tensor Wcat = at::cat({wq, wv}, 0);                               // (Cq+Cv, C, 1, 1)
  const Tensor t = gemm_acc(batch_weight(Wcat, N, false), x.view({N, C, HW}));  // (N, Cq+Cv, HW) acc
  C10_CUDA_CHECK(proj_qv_epilogue_forward(dtype_of(x, op), N, Cq, Cv, HW, t.data_ptr(), bq.data_ptr(),
                                                bv.data_ptr(), q.data_ptr(), v.data_ptr(), stream_of(x)));
  return {q, v};
}

// Gradients (grad_x, grad_wq, grad_bq, grad_wv, grad_bv) of proj_qv.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> proj_qv_backward_cuda(const Tensor& grad_q, const Tensor& grad_v,
                                                                         const Tensor& x, const Tensor& wq,
                                                                         const Tensor& bq, const Tensor& wv,
                                                                         const Tensor& bv) {
  const char* op = "eimn_C::proj_qv_backward (CUDA)";
  check_proj_qv(op, x, wq, bq, wv, bv);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Cq = wq.size(0), Cv = wv.size(0);
  check_tensor(op, "grad_q", grad_q, x, {N, Cq, H, W});
  check_tensor(op, "grad_v", grad_v, x, {N, Cv, H, W});
  c10::cuda::CUDAGuard guard(x.device());
  if (N * HW == 0 || Cq + Cv == 0) {
    return {at::zeros_like(x), at::zeros_like(wq), at::zeros_like(bq), at::zeros_like(wv), at::zeros_like(bv)};
  }
  const Tensor X = x.view({N, C, HW});
  const Tensor tq = gemm_acc(batch_weight(wq, N, false), X);  // (N, Cq, HW) acc, pre-bias
  Tensor G = at::empty({N, Cq + Cv, HW}, x.options());         // [grad of Wq x + bq; grad_v]
  C10_CUDA_CHECK(proj_qv_epilogue_backward(dtype_of(x, op), N, Cq, Cv, HW, tq.data_ptr(), bq.data_ptr(),
                                                 grad_q.data_ptr(), grad_v.data_ptr(), G.data_ptr(), stream_of(x)));
  const Tensor Wcat = at::cat({wq, wv}, 0);
  const Tensor gx = at::bmm(batch_weight(Wcat, N, true), G).view({N, C, H, W});
  const Tensor gW = weight_grad(G, X).to(x.scalar_type());  // (Cq+Cv, C)
  const Tensor gb = bias_grad(G).to(x.scalar_type());
  // clone(): the four gradients must not share gW's / gb's storage (outputs of an op must not alias).
  return {gx, gW.narrow(0, 0, Cq).reshape(wq.sizes()).clone(), gb.narrow(0, 0, Cq).clone(),
          gW.narrow(0, Cq, Cv).reshape(wv.sizes()).clone(), gb.narrow(0, Cq, Cv).clone()};
}

// out = Wo (SiLU(Wf y + bf) * v) + bo. y, v: (N, C, H, W); wf: (C, C, 1, 1); wo: (Co, C, 1, 1).
Tensor gate_out_forward_cuda(const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf, const Tensor& wo,
                             const Tensor& bo) {
  const char* op = "eimn_C::gate_out_forward (CUDA)";
  check_gate_out(op, y, v, wf, bf, wo, bo);
  const int64_t N = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3), HW = H * W;
  const int64_t Co = wo.size(0);
  c10::cuda::CUDAGuard guard(y.device());
  Tensor out = at::empty({N, Co, H, W}, y.options());
  if (N * HW * Co == 0) return out;
  const DType dt = dtype_of(y, op);
  const cudaStream_t st = stream_of(y);
  const Tensor f = gemm_acc(batch_weight(wf, N, false), y.view({N, C, HW}));  // (N, C, HW) acc
  Tensor s = at::empty({N, C, HW}, y.options());
  C10_CUDA_CHECK(gate_out_epilogue_gate(dt, N, C, HW, f.data_ptr(), bf.data_ptr(), v.data_ptr(), s.data_ptr(),
                                              st));
  const Tensor o = gemm_acc(batch_weight(wo, N, false), s);  // (N, Co, HW) acc
  C10_CUDA_CHECK(bias_epilogue(dt, N, Co, HW, o.data_ptr(), bo.data_ptr(), out.data_ptr(), st));
  return out;
}

// Gradients (grad_y, grad_v, grad_wf, grad_bf, grad_wo, grad_bo) of gate_out; grad_out: (N, Co, H, W).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gate_out_backward_cuda(
    const Tensor& grad_out, const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf, const Tensor& wo,
    const Tensor& bo) {
  const char* op = "eimn_C::gate_out_backward (CUDA)";
  check_gate_out(op, y, v, wf, bf, wo, bo);
  const int64_t N = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3), HW = H * W;
  const int64_t Co = wo.size(0);
  check_tensor(op, "grad_out", grad_out, y, {N, Co, H, W});
  c10::cuda::CUDAGuard guard(y.device());
  if (N * HW == 0) {
    return {at::zeros_like(y), at::zeros_like(v), at::zeros_like(wf), at::zeros_like(bf), at::zeros_like(wo),
            at::zeros_like(bo)};
  }
  const DType dt = dtype_of(y, op);
  const cudaStream_t st = stream_of(y);
  const Tensor Y = y.view({N, C, HW}), GO = grad_out.view({N, Co, HW});
  const Tensor f = gemm_acc(batch_weight(wf, N, false), Y);    // (N, C, HW) acc, pre-bias
  const Tensor gs = gemm_acc(batch_weight(wo, N, true), GO);   // (N, C, HW) acc: grad of the gated product
  Tensor s = at::empty({N, C, HW}, y.options()), gv = at::empty_like(v), gf = at::empty({N, C, HW}, y.options());
  C10_CUDA_CHECK(gate_out_epilogue_backward(dt, N, C, HW, f.data_ptr(), bf.data_ptr(), v.data_ptr(),
                                                  gs.data_ptr(), s.data_ptr(), gv.data_ptr(), gf.data_ptr(), st));
  const Tensor gy = at::bmm(batch_weight(wf, N, true), gf).view({N, C, H, W});
  const auto T = y.scalar_type();
  return {gy, gv, weight_grad(gf, Y).to(T).reshape(wf.sizes()).contiguous(), bias_grad(gf).to(T),
          weight_grad(GO, s).to(T).reshape(wo.sizes()).contiguous(), bias_grad(GO).to(T)};
}

}  // namespace
}  // namespace eimn::cuda::molrcm

TORCH_LIBRARY_IMPL(eimn_C, CUDA, m) {
  m.impl("dw_mix_forward", &eimn::cuda::molrcm::dw_mix_forward_cuda);
  m.impl("dw_mix_backward", &eimn::cuda::molrcm::dw_mix_backward_cuda);
  m.impl("proj_qv_forward", &eimn::cuda::molrcm::proj_qv_forward_cuda);
  m.impl("proj_qv_backward", &eimn::cuda::molrcm::proj_qv_backward_cuda);
  m.impl("gate_out_forward", &eimn::cuda::molrcm::gate_out_forward_cuda);
  m.impl("gate_out_backward", &eimn::cuda::molrcm::gate_out_backward_cuda);
}
