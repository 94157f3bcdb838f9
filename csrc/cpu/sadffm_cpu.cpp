// CPU (C++/OpenMP via at::parallel_for) ops of the SADFFM layer, float32 / float64: input checks, ATen wrappers and
// registration. The kernels are in vertical slices, all compiled in this one translation unit:
//   sadffm_common.h    dvec, packed GEMM panels, streaming stores, chunks and bands
//   sadffm_dwconv.h    depthwise rows (KxK 'same' conv of a band, weight gradient)
//   sadffm_gated.h     gated_dwconv_forward / _backward : h = GELU(t[:hid]) * t[hid:], t = DW_K(W_in x + b_in)
//   sadffm_dffm.h      dffm_out_forward                 : y = W_out h + b_out; out = y * c * s (DFFM gate)
//   sadffm_dffm_bwd.h  dffm_out_backward, by pass
//   sadffm_layer.h     whole layer: single-kernel inference, both halves with h in packed panels, the stash
// Semantics: eimn_kernels/reference.py. Layouts: contiguous NCHW; 1x1 weights (Cout, Cin, 1, 1), depthwise
// (C, 1, K, K). Weight gradients are reduced per tile / chunk and then summed in a fixed order, so results
// do not depend on the number of threads.
#include "cpu/cpu_isa.h"
#include "cpu/cpu_register.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/cpu_checks.h"
#include "cpu/cpu_pool.h"
#include "cpu/sadffm_common.h"
#include "cpu/sadffm_convmlp.h"
#include "cpu/sadffm_dffm.h"
#include "cpu/sadffm_dffm_bwd.h"
#include "cpu/sadffm_dwconv.h"
#include "cpu/sadffm_gated.h"
#include "cpu/sadffm_layer.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace sadffm {
namespace {

// ---------------------------------------------------------------------------------------------- checks
constexpr const char* kOp = "sadffm cpu";
// Weights, in two steps where later shapes depend on earlier sizes: rank, device and dtype first (check_tensor),
// the exact shape once the sizes are known (check_shape). Tensors of a known shape: check_like (cpu_checks.h).
void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == dim, kOp, ": ", name, " must be ", dim, "-d, got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), kOp, ": ", name, " has dtype ", t.scalar_type(),
              ", the input has ", ref.scalar_type());
}
void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// ----------------------------------------------------------------------------------- gated_dwconv
void check_gated_dwconv(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_dw,
                        const at::Tensor& b_dw) {
  check_image(x, "sadffm cpu", "x");
  check_tensor(w_in, "w_in", 4, x);
  check_tensor(b_in, "b_in", 1, x);
  check_tensor(w_dw, "w_dw", 4, x);
  check_tensor(b_dw, "b_dw", 1, x);
  const int64_t C = x.size(1), C2 = w_in.size(0);
  TORCH_CHECK(C2 % 2 == 0 && C2 > 0, "sadffm cpu: w_in must have an even number (2*hidden) of output channels, got ",
              C2);
  check_shape(w_in, "w_in", {C2, C, 1, 1});
  check_shape(b_in, "b_in", {C2});
  const int64_t K = w_dw.size(-1);
  TORCH_CHECK(K % 2 == 1, "sadffm cpu: w_dw must have an odd kernel size, got ", K);
  check_shape(w_dw, "w_dw", {C2, 1, K, K});
  check_shape(b_dw, "b_dw", {C2});
}

// Forward: x (N, C, H, W), w_in (2h, C, 1, 1), b_in (2h), w_dw (2h, 1, K, K), b_dw (2h) -> h (N, h, H, W);
// with keep, also the stash for gated_dwconv_backward_stash (1-d, gated_stash_numel), else an empty tensor.
std::tuple<at::Tensor, at::Tensor> gated_forward(const at::Tensor& x_, const at::Tensor& w_in_,
                                                 const at::Tensor& b_in_, const at::Tensor& w_dw_,
                                                 const at::Tensor& b_dw_, bool keep) {
  check_gated_dwconv(x_, w_in_, b_in_, w_dw_, b_dw_);
  auto x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(), w_dw = w_dw_.contiguous(),
       b_dw = b_dw_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_in.size(0) / 2;
  auto h = pooled_empty({N, hid, H, W}, x.options());
  auto stash = pooled_empty({keep ? gated_stash_numel(N, hid, H * W) : 0}, x.options());
  if (keep) {  // the guards
    stash.narrow(0, 0, kRowGuard).zero_();
    stash.narrow(0, stash.numel() - kRowGuard, kRowGuard).zero_();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_dwconv_forward", [&] {
    using T = scalar_t;
    gated_dwconv_fwd_kernel<T>(x.data_ptr<T>(), w_in.data_ptr<T>(), b_in.data_ptr<T>(), w_dw.data_ptr<T>(),
                               b_dw.data_ptr<T>(), h.data_ptr<T>(), N, int(C), int(hid), H, W, int(w_dw.size(-1)),
                               keep ? stash.data_ptr<T>() + kRowGuard : nullptr);
  });
  return {h, stash};
}

at::Tensor gated_dwconv_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
                                const at::Tensor& w_dw, const at::Tensor& b_dw) {
  return std::get<0>(gated_forward(x, w_in, b_in, w_dw, b_dw, false));
}

// Forward for training: (h, stash); the stash (U = W_in x + b_in) lets gated_dwconv_backward_stash skip that GEMM.
std::tuple<at::Tensor, at::Tensor> gated_dwconv_forward_stash(const at::Tensor& x, const at::Tensor& w_in,
                                                              const at::Tensor& b_in, const at::Tensor& w_dw,
                                                              const at::Tensor& b_dw) {
  return gated_forward(x, w_in, b_in, w_dw, b_dw, true);
}

using GatedGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Backward: grad_h (N, h, H, W) + forward inputs (+ the forward's stash, or an undefined tensor)
// -> (grad_x, grad_w_in, grad_b_in, grad_w_dw, grad_b_dw).
GatedGrads gated_backward(const at::Tensor& gh_, const at::Tensor& x_, const at::Tensor& w_in_,
                          const at::Tensor& b_in_, const at::Tensor& w_dw_, const at::Tensor& b_dw_,
                          const at::Tensor& stash_) {
  check_gated_dwconv(x_, w_in_, b_in_, w_dw_, b_dw_);
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3), hid = w_in_.size(0) / 2;
  check_like(gh_, kOp, "grad_h", x_, {N, hid, H, W});
  at::Tensor stash;
  if (stash_.defined()) {
    check_like(stash_, kOp, "stash", x_, {gated_stash_numel(N, hid, H * W)});
    stash = stash_.contiguous();
  }
  auto gh = gh_.contiguous(), x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(),
       w_dw = w_dw_.contiguous(), b_dw = b_dw_.contiguous();
  auto gx = pooled_empty_like(x), gw_in = at::empty_like(w_in), gb_in = at::empty_like(b_in),
       gw_dw = at::empty_like(w_dw), gb_dw = at::empty_like(b_dw);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_dwconv_backward", [&] {
    using T = scalar_t;
    gated_dwconv_bwd_kernel<T>(gh.data_ptr<T>(), x.data_ptr<T>(), w_in.data_ptr<T>(), b_in.data_ptr<T>(),
                               w_dw.data_ptr<T>(), b_dw.data_ptr<T>(), gx.data_ptr<T>(), gw_in.data_ptr<T>(),
                               gb_in.data_ptr<T>(), gw_dw.data_ptr<T>(), gb_dw.data_ptr<T>(), N, int(C), int(hid), H,
                               W, int(w_dw.size(-1)), stash.defined() ? stash.data_ptr<T>() + kRowGuard : nullptr);
  });
  return {gx, gw_in, gb_in, gw_dw, gb_dw};
}

GatedGrads gated_dwconv_backward(const at::Tensor& gh, const at::Tensor& x, const at::Tensor& w_in,
                                 const at::Tensor& b_in, const at::Tensor& w_dw, const at::Tensor& b_dw) {
  return gated_backward(gh, x, w_in, b_in, w_dw, b_dw, at::Tensor());
}

// Backward from the stash of gated_dwconv_forward_stash.
GatedGrads gated_dwconv_backward_stash(const at::Tensor& gh, const at::Tensor& x, const at::Tensor& w_in,
                                       const at::Tensor& b_in, const at::Tensor& w_dw, const at::Tensor& b_dw,
                                       const at::Tensor& stash) {
  return gated_backward(gh, x, w_in, b_in, w_dw, b_dw, stash);
}

// --------------------------------------------------------------------------------------- dffm_out
constexpr int kNumDffmW = 12;
const char* kDffmNames[kNumDffmW] = {"w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr",
                                     "w_lr",  "b_lr",  "w_ce", "b_ce", "w_se", "b_se"};

// Validates the 12 DFFM weights for hid input channels (dtype and device of ref); returns them contiguous.
std::vector<at::Tensor> check_dffm_weights(int64_t hid, const at::Tensor& ref, const std::vector<at::Tensor>& ws) {
  const int dims[kNumDffmW] = {4, 1, 1, 1, 4, 1, 4, 1, 4, 1, 4, 1};
  for (int i = 0; i < kNumDffmW; ++i) check_tensor(ws[i], kDffmNames[i], dims[i], ref);
  const int64_t C = ws[0].size(0), R = ws[4].size(0);
  TORCH_CHECK(C > 0 && R > 0, "sadffm cpu: w_out and w_gr must have at least one output channel");
  check_shape(ws[0], "w_out", {C, hid, 1, 1});
  check_shape(ws[1], "b_out", {C});
  check_shape(ws[2], "ln_w", {C});
  check_shape(ws[3], "ln_b", {C});
  check_shape(ws[4], "w_gr", {R, C, 1, 1});
  check_shape(ws[5], "b_gr", {R});
  check_shape(ws[6], "w_lr", {R, C, 1, 1});
  check_shape(ws[7], "b_lr", {R});
  check_shape(ws[8], "w_ce", {C, R, 1, 1});
  check_shape(ws[9], "b_ce", {C});
  check_shape(ws[10], "w_se", {1, 2 * R, 1, 1});
  check_shape(ws[11], "b_se", {1});
  std::vector<at::Tensor> out;
  for (auto& w : ws) out.push_back(w.contiguous());
  return out;
}

// Validates h and the 12 DFFM weights; returns the weights contiguous.
std::vector<at::Tensor> check_dffm(const at::Tensor& h, const std::vector<at::Tensor>& ws) {
  check_image(h, "sadffm cpu", "h");
  return check_dffm_weights(h.size(1), h, ws);
}

template <typename T> DffmW<T> dffm_weights(const std::vector<at::Tensor>& ws, int64_t hid, double eps) {
  DffmW<T> w;
  const T** p[kNumDffmW] = {&w.w_out, &w.b_out, &w.ln_w, &w.ln_b, &w.w_gr, &w.b_gr,
                            &w.w_lr,  &w.b_lr,  &w.w_ce, &w.b_ce, &w.w_se, &w.b_se};
  for (int i = 0; i < kNumDffmW; ++i) *p[i] = ws[i].data_ptr<T>();
  w.C = int(ws[0].size(0));
  w.hid = int(hid);
  w.R = int(ws[4].size(0));
  w.eps = T(eps);
  w.w_out_k = pack_a_blocks<T>(w.w_out, w.C, w.hid, w.hid, 1);
  w.w_lr_k = pack_a_blocks<T>(w.w_lr, w.R, w.C, w.C, 1);
  return w;
}

// Forward: h (N, hid, H, W) + DFFM weights (shapes in check_dffm) -> out (N, C, H, W); with keep, also the
// stash for dffm_out_backward_stash (1-d, dffm_stash_numel elements), else stash is an empty tensor.
std::tuple<at::Tensor, at::Tensor> dffm_forward(const at::Tensor& h_, const std::vector<at::Tensor>& ws_, double eps,
                                                bool keep) {
  auto ws = check_dffm(h_, ws_);
  auto h = h_.contiguous();
  const int64_t N = h.size(0), hid = h.size(1), H = h.size(2), W = h.size(3), C = ws[0].size(0), R = ws[4].size(0);
  auto out = pooled_empty({N, C, H, W}, h.options());
  auto stash = pooled_empty({keep ? dffm_stash_numel(N, C, R, H * W) : 0}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "dffm_out_forward", [&] {
    using T = scalar_t;
    dffm_fwd_kernel<T>(dffm_weights<T>(ws, hid, eps), h.data_ptr<T>(), out.data_ptr<T>(), N, H * W,
                       keep ? stash.data_ptr<T>() : nullptr);
  });
  return {out, stash};
}

at::Tensor dffm_out_forward(const at::Tensor& h, const at::Tensor& w_out, const at::Tensor& b_out,
                            const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w_gr,
                            const at::Tensor& b_gr, const at::Tensor& w_lr, const at::Tensor& b_lr,
                            const at::Tensor& w_ce, const at::Tensor& b_ce, const at::Tensor& w_se,
                            const at::Tensor& b_se, double eps) {
  return std::get<0>(
      dffm_forward(h, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se}, eps, false));
}

// Forward for training: (out, stash); the stash (y, the LayerNorm statistics and the local-branch
// pre-activations, DffmStash) lets dffm_out_backward_stash skip recomputing y = W_out h.
std::tuple<at::Tensor, at::Tensor> dffm_out_forward_stash(const at::Tensor& h, const at::Tensor& w_out,
                                                          const at::Tensor& b_out, const at::Tensor& ln_w,
                                                          const at::Tensor& ln_b, const at::Tensor& w_gr,
                                                          const at::Tensor& b_gr, const at::Tensor& w_lr,
                                                          const at::Tensor& b_lr, const at::Tensor& w_ce,
                                                          const at::Tensor& b_ce, const at::Tensor& w_se,
                                                          const at::Tensor& b_se, double eps) {
  return dffm_forward(h, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se}, eps, true);
}

using DffmGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Backward: grad_out (N, C, H, W) + forward inputs (+ the forward's stash, or an undefined tensor) -> gradients of
// (h, w_out, ..., b_se), same order.
DffmGrads dffm_backward(const at::Tensor& go_, const at::Tensor& h_, const std::vector<at::Tensor>& ws_, double eps,
                        const at::Tensor& stash_) {
  auto ws = check_dffm(h_, ws_);
  const int64_t N = h_.size(0), hid = h_.size(1), H = h_.size(2), W = h_.size(3), C = ws[0].size(0),
                R = ws[4].size(0);
  check_like(go_, kOp, "grad_out", h_, {N, C, H, W});
  at::Tensor stash;
  if (stash_.defined()) {
    check_like(stash_, kOp, "stash", h_, {dffm_stash_numel(N, C, R, H * W)});
    stash = stash_.contiguous();
  }
  auto h = h_.contiguous(), go = go_.contiguous();
  auto gh = pooled_empty_like(h);
  std::vector<at::Tensor> g;
  for (auto& w : ws) g.push_back(at::empty_like(w));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "dffm_out_backward", [&] {
    using T = scalar_t;
    dffm_bwd_kernel<T>(dffm_weights<T>(ws, hid, eps), go.data_ptr<T>(), h.data_ptr<T>(),
                       stash.defined() ? stash.data_ptr<T>() : nullptr, N, H * W, gh.data_ptr<T>(),
                       g[0].data_ptr<T>(), g[1].data_ptr<T>(), g[2].data_ptr<T>(), g[3].data_ptr<T>(),
                       g[4].data_ptr<T>(), g[5].data_ptr<T>(), g[6].data_ptr<T>(), g[7].data_ptr<T>(),
                       g[8].data_ptr<T>(), g[9].data_ptr<T>(), g[10].data_ptr<T>(), g[11].data_ptr<T>());
  });
  return {gh, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]};
}

DffmGrads dffm_out_backward(const at::Tensor& go, const at::Tensor& h, const at::Tensor& w_out,
                            const at::Tensor& b_out, const at::Tensor& ln_w, const at::Tensor& ln_b,
                            const at::Tensor& w_gr, const at::Tensor& b_gr, const at::Tensor& w_lr,
                            const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce,
                            const at::Tensor& w_se, const at::Tensor& b_se, double eps) {
  return dffm_backward(go, h, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se}, eps,
                       at::Tensor());
}

// Backward from the stash of dffm_out_forward_stash (same gradients as dffm_out_backward, bit for bit).
DffmGrads dffm_out_backward_stash(const at::Tensor& go, const at::Tensor& h, const at::Tensor& w_out,
                                  const at::Tensor& b_out, const at::Tensor& ln_w, const at::Tensor& ln_b,
                                  const at::Tensor& w_gr, const at::Tensor& b_gr, const at::Tensor& w_lr,
                                  const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce,
                                  const at::Tensor& w_se, const at::Tensor& b_se, const at::Tensor& stash,
                                  double eps) {
  return dffm_backward(go, h, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se}, eps,
                       stash);
}

// ------------------------------------------------------------------------------------ whole layer
// Smallest hidden tensor (bytes) for which sadffm_infer_forward runs its single kernel; the environment variable
// EIMN_SADFFM_FUSED_MIN_BYTES overrides it (the tests set 0 to exercise the single kernel on small inputs).
int64_t infer_min_hidden_bytes() {
  const char* e = std::getenv("EIMN_SADFFM_FUSED_MIN_BYTES");
  return e && *e ? std::strtoll(e, nullptr, 10) : (int64_t(8) << 20);
}

// Whole layer, no autograd: x (N, C, H, W) + gated_dwconv weights + DFFM weights -> out (N, C_out, H, W);
// equals dffm_out_forward(gated_dwconv_forward(x, ...), ...).
at::Tensor sadffm_infer_forward(const at::Tensor& x_, const at::Tensor& w_in_, const at::Tensor& b_in_,
                                const at::Tensor& w_dw_, const at::Tensor& b_dw_, const at::Tensor& w_out,
                                const at::Tensor& b_out, const at::Tensor& ln_w, const at::Tensor& ln_b,
                                const at::Tensor& w_gr, const at::Tensor& b_gr, const at::Tensor& w_lr,
                                const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce,
                                const at::Tensor& w_se, const at::Tensor& b_se, double eps, bool bf16,
                                const std::optional<at::Tensor>& ls, const std::optional<at::Tensor>& norm_w,
                                const std::optional<at::Tensor>& norm_b, double norm_eps) {
  check_gated_dwconv(x_, w_in_, b_in_, w_dw_, b_dw_);
  if (bf16) check_bf16(x_, "eimn_C::sadffm_infer_forward (cpu)");
  // The EIMN block's tail (inference): x + ls * SADFFM(x), then the LayerNorm after the block (norm_w, norm_b).
  const int64_t C0 = x_.size(1);
  TORCH_CHECK(ls.has_value() || !norm_w.has_value(), "eimn_C::sadffm_infer_forward (cpu): norm_w needs ls");
  TORCH_CHECK(norm_w.has_value() == norm_b.has_value(),
              "eimn_C::sadffm_infer_forward (cpu): norm_w and norm_b come together");
  TORCH_CHECK(!ls.has_value() || w_out.size(0) == C0, "eimn_C::sadffm_infer_forward (cpu): the residual needs ",
              "w_out's output channels (", w_out.size(0), ") to equal x's (", C0, ")");
  if (ls) check_like(*ls, kOp, "ls", x_, {C0});
  if (norm_w) check_like(*norm_w, kOp, "norm_w", x_, {C0});
  if (norm_b) check_like(*norm_b, kOp, "norm_b", x_, {C0});
  const at::Tensor ls_c = ls ? ls->contiguous() : at::Tensor(), nw_c = norm_w ? norm_w->contiguous() : at::Tensor(),
                   nb_c = norm_b ? norm_b->contiguous() : at::Tensor();
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3), hid = w_in_.size(0) / 2;
  auto ws = check_dffm_weights(hid, x_, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se});
  // Below the threshold the two kernels run back to back, h passed between them in the packed panel layout that
  // the second one's GEMM reads in place (streaming stores; no strided re-read of h per tile). Measured, 2 threads,
  // the single kernel against the two: 4x64x64x64 (h = 11 MB) 1.03-1.04x, 8x64x64x64 1.03x, 1x64x64x64 1.00x,
  // 1x64x32x32 0.91x; 1x64x180x320 (h = 39 MB) 0.96x, kept there as it never holds h in memory.
  // bf16 runs the single kernel at every size (its GEMMs are the bfloat16 ones).
  const bool single = bf16 || N * hid * H * W * int64_t(x_.element_size()) >= infer_min_hidden_bytes();
  auto x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(), w_dw = w_dw_.contiguous(),
       b_dw = b_dw_.contiguous();
  const int64_t Co = ws[0].size(0), K = w_dw.size(-1);
  auto out = pooled_empty({N, Co, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sadffm_infer_forward", [&] {
    using T = scalar_t;
    const DffmW<T> dw = dffm_weights<T>(ws, hid, eps);
    BlockTail<T> tail;
    if (ls) {
      tail.a = x.data_ptr<T>();
      tail.ls = ls_c.data_ptr<T>();
      if (norm_w) tail.ln_w = nw_c.data_ptr<T>(), tail.ln_b = nb_c.data_ptr<T>(), tail.ln_eps = T(norm_eps);
    }
    if (single) {
      sadffm_infer_kernel<T>(x.data_ptr<T>(), w_in.data_ptr<T>(), b_in.data_ptr<T>(), w_dw.data_ptr<T>(),
                             b_dw.data_ptr<T>(), dw, out.data_ptr<T>(), N, int(C), H, W, int(K), bf16, &tail);
      return;
    }
    auto hp = pooled_empty({N * panel_image_numel<T>(hid, H * W)}, x.options());
    sadffm_panels_fwd<T>(x, w_in, b_in, w_dw, b_dw, dw, hp.data_ptr<T>(), out.data_ptr<T>(), nullptr, nullptr, &tail);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sadffm_forward_stash(
    const at::Tensor& x_, const at::Tensor& w_in_, const at::Tensor& b_in_, const at::Tensor& w_dw_,
    const at::Tensor& b_dw_, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& ln_w,
    const at::Tensor& ln_b, const at::Tensor& w_gr, const at::Tensor& b_gr, const at::Tensor& w_lr,
    const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce, const at::Tensor& w_se,
    const at::Tensor& b_se, double eps) {
  check_gated_dwconv(x_, w_in_, b_in_, w_dw_, b_dw_);
  const int64_t N = x_.size(0), H = x_.size(2), W = x_.size(3), hid = w_in_.size(0) / 2, HW = H * W;
  auto ws = check_dffm_weights(hid, x_, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se});
  auto x = x_.contiguous(), w_in = w_in_.contiguous(), b_in = b_in_.contiguous(), w_dw = w_dw_.contiguous(),
       b_dw = b_dw_.contiguous();
  const SadffmStash sl = sadffm_stash(x.scalar_type(), N, hid, ws[0].size(0), ws[4].size(0), HW);
  auto out = pooled_empty({N, ws[0].size(0), H, W}, x.options());
  auto stash = pooled_empty({sl.numel()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sadffm_forward_stash", [&] {
    using T = scalar_t;
    T* hp = stash.data_ptr<T>();
    T* u = hp + sl.h;
    std::fill(u, u + kRowGuard, T(0));  // U's guards
    std::fill(u + sl.gated - kRowGuard, u + sl.gated, T(0));
    sadffm_panels_fwd<T>(x, w_in, b_in, w_dw, b_dw, dffm_weights<T>(ws, hid, eps), hp, out.data_ptr<T>(),
                         u + kRowGuard, u + sl.gated);
  });
  return {out, stash};
}

// Gradients of (x, w_in, b_in, w_dw, b_dw, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se,
// b_se) from grad_out (N, C_out, H, W) and sadffm_forward_stash's stash.
std::vector<at::Tensor> sadffm_backward_stash(
    const at::Tensor& go_, const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in,
    const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_out, const at::Tensor& b_out,
    const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w_gr, const at::Tensor& b_gr,
    const at::Tensor& w_lr, const at::Tensor& b_lr, const at::Tensor& w_ce, const at::Tensor& b_ce,
    const at::Tensor& w_se, const at::Tensor& b_se, const at::Tensor& stash_, double eps) {
  check_gated_dwconv(x, w_in, b_in, w_dw, b_dw);
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), hid = w_in.size(0) / 2, HW = H * W;
  auto ws = check_dffm_weights(hid, x, {w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se});
  const int64_t Co = ws[0].size(0);
  const SadffmStash sl = sadffm_stash(x.scalar_type(), N, hid, Co, ws[4].size(0), HW);
  check_like(go_, kOp, "grad_out", x, {N, Co, H, W});
  check_like(stash_, kOp, "stash", x, {sl.numel()});
  auto go = go_.contiguous(), stash = stash_.contiguous();
  auto gh = pooled_empty({N, hid, H, W}, x.options());
  std::vector<at::Tensor> g;
  for (auto& w : ws) g.push_back(at::empty_like(w));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sadffm_backward_stash", [&] {
    using T = scalar_t;
    const T* hp = stash.data_ptr<T>();
    dffm_bwd_kernel<T>(dffm_weights<T>(ws, hid, eps), go.data_ptr<T>(), hp, hp + sl.h + sl.gated, N, HW,
                       gh.data_ptr<T>(), g[0].data_ptr<T>(), g[1].data_ptr<T>(), g[2].data_ptr<T>(),
                       g[3].data_ptr<T>(), g[4].data_ptr<T>(), g[5].data_ptr<T>(), g[6].data_ptr<T>(),
                       g[7].data_ptr<T>(), g[8].data_ptr<T>(), g[9].data_ptr<T>(), g[10].data_ptr<T>(),
                       g[11].data_ptr<T>(), true);
  });
  auto gg = gated_backward(gh, x, w_in, b_in, w_dw, b_dw, stash.narrow(0, sl.h, sl.gated));
  std::vector<at::Tensor> all = {std::get<0>(gg), std::get<1>(gg), std::get<2>(gg), std::get<3>(gg),
                                 std::get<4>(gg)};
  all.insert(all.end(), g.begin(), g.end());
  return all;
}

// The convolutional MLP (VAN's), inference: W_2 GELU(DW(W_1 x + b_1) + b_dw) + b_2 [+ x] (sadffm_convmlp.h).
at::Tensor convmlp_infer_forward(const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& b1,
                                 const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w2,
                                 const at::Tensor& b2, bool add_input) {
  check_image(x_, kOp, "x");
  const int64_t N = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3);
  TORCH_CHECK(w1.dim() == 4 && w2.dim() == 4 && w_dw.dim() == 4, kOp, ": convmlp weights must be 4-d");
  const int64_t hid = w1.size(0), Co = w2.size(0), K = w_dw.size(-1);
  check_like(w1, kOp, "w1", x_, {hid, C, 1, 1});
  check_like(b1, kOp, "b1", x_, {hid});
  TORCH_CHECK(K % 2 == 1, kOp, ": the depthwise kernel must be odd and square, got ", w_dw.sizes());
  check_like(w_dw, kOp, "w_dw", x_, {hid, 1, K, K});
  check_like(b_dw, kOp, "b_dw", x_, {hid});
  check_like(w2, kOp, "w2", x_, {Co, hid, 1, 1});
  check_like(b2, kOp, "b2", x_, {Co});
  TORCH_CHECK(!add_input || Co == C, kOp, ": add_input needs as many output channels as input channels (", Co,
              " vs ", C, ")");
  auto x = x_.contiguous();
  auto out = pooled_empty({N, Co, H, W}, x.options());
  if (out.numel() == 0) return out;
  auto w1c = w1.contiguous(), b1c = b1.contiguous(), wdc = w_dw.contiguous(), bdc = b_dw.contiguous(),
       w2c = w2.contiguous(), b2c = b2.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "convmlp_infer_forward", [&] {
    using T = scalar_t;
    convmlp_infer_kernel<T>(x.data_ptr<T>(), w1c.data_ptr<T>(), b1c.data_ptr<T>(), wdc.data_ptr<T>(),
                            bdc.data_ptr<T>(), w2c.data_ptr<T>(), b2c.data_ptr<T>(), out.data_ptr<T>(), N, int(C),
                            int(hid), int(Co), H, W, int(K), add_input);
  });
  return out;
}

}  // namespace
}  // namespace sadffm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// This level's kernels of the sadffm ops (cpu_register.h; cpu_dispatch.cpp registers one level's).
void register_sadffm(torch::Library& m) {
  m.impl("convmlp_infer_forward", &sadffm::convmlp_infer_forward);
  m.impl("gated_dwconv_forward", &sadffm::gated_dwconv_forward);
  m.impl("gated_dwconv_backward", &sadffm::gated_dwconv_backward);
  m.impl("gated_dwconv_forward_stash", &sadffm::gated_dwconv_forward_stash);
  m.impl("gated_dwconv_backward_stash", &sadffm::gated_dwconv_backward_stash);
  m.impl("dffm_out_forward", &sadffm::dffm_out_forward);
  m.impl("dffm_out_backward", &sadffm::dffm_out_backward);
  m.impl("dffm_out_forward_stash", &sadffm::dffm_out_forward_stash);
  m.impl("dffm_out_backward_stash", &sadffm::dffm_out_backward_stash);
  m.impl("sadffm_infer_forward", &sadffm::sadffm_infer_forward);
  m.impl("sadffm_forward_stash", &sadffm::sadffm_forward_stash);
  m.impl("sadffm_backward_stash", &sadffm::sadffm_backward_stash);
}
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
