// CPU (OpenMP) kernels of the MOLRCM ops: dw_mix, proj_qv, gate_out (forward and backward),
// float32 and float64. Schemas: csrc/eimn_ops.cpp; semantics: eimn_kernels/reference.py.
//
// * 1x1 convolutions run as GEMMs over pixel tiles of one image (own register-blocked kernels),
//   with bias/activation/gating epilogues applied while the tile is in cache; tiles run in parallel.
// * dw_mix works per (n, c) plane: r = DW0(q) lives only in a thread-local zero-padded buffer and
//   the second (dilated) depthwise conv reads it from there; r is never written to memory.
// * Backwards recompute intermediates (pre-activations, r) from the inputs. Weight/bias gradients are
//   written per task (tile or plane) and summed over tasks in a fixed order: deterministic.
// * Image-sized outputs come from the buffer cache of cpu_pool.h (no page faults on every call).
#include "cpu/cpu_isa.h"
#include "cpu/cpu_register.h"
#include "cpu/molrcm_vec.h"
#include "cpu/cpu_gemm.h"
#include "cpu/cpu_gemm_bf16.h"
#include "cpu/cpu_checks.h"
#include "cpu/molrcm_dwblock.h"
#include "cpu/molrcm_dwplane.h"
#include "cpu/cpu_pool.h"
#include "cpu/cpu_reduce.h"
#include "cpu/cpu_tiles.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace molrcm {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- input checks
constexpr const char* kOp = "eimn_C (cpu)";  // the prefix of this file's error messages

// ================================================================ proj_qv
// q = GELU(Wq x + bq), v = Wv x + bv. x: (N, C, H, W); wq: (Cq, C, 1, 1); wv: (Cv, C, 1, 1).
template <typename T>
void proj_qv_fwd_impl(const Tensor& x, const Tensor& wqv, const Tensor& bq, const Tensor& bv, Tensor& q,
                      Tensor& v) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t Cq = q.size(1), Cv = v.size(1), Co = Cq + Cv;
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P;
  const T *xp = x.data_ptr<T>(), *w = wqv.data_ptr<T>(), *bqp = bq.data_ptr<T>(), *bvp = bv.data_ptr<T>();
  T *qp = q.data_ptr<T>(), *vp = v.data_ptr<T>();
  const std::vector<T> wk = pack_a(w, Co, C, C, 1);
  // dw_mix and gate_out read q and v only after the whole image: streamed past the caches where large.
  const bool stream = stream_output(int64_t(sizeof(T)) * (q.numel() + v.numel()));
  // Per tile: x packed once into panels of NR pixels; per panel (or pair of panels, where the micro-kernel takes
  // two), the q rows (GELU epilogue) and v rows (bias) are stored straight from the accumulators.
  constexpr int64_t NR = 2 * (32 / sizeof(T));
  at::parallel_for(0, N * nt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(((P + NR - 1) / NR) * NR * C);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nt, p0 = (t % nt) * P, np = std::min(P, HW - p0);
      pack_b<T>(C, np, xp + n * C * HW + p0, HW, panel.data());
      // the epilogues of panel pq (pixels p0 + pq * NR on); rows come as one 64-byte part or two halves
      auto epilogue_q = [&](int64_t pq) {
        const int64_t p = p0 + pq * NR, cnt = std::min(NR, np - pq * NR);
        return [&, p, cnt](int64_t o, auto... c) {
          const T bias = bqp[o];
          store_row_as(qp + (n * Cq + o) * HW + p, cnt, stream, [&](auto r, int64_t) { return v_gelu(r + bias); },
                       c...);
        };
      };
      auto epilogue_v = [&](int64_t pq) {
        const int64_t p = p0 + pq * NR, cnt = std::min(NR, np - pq * NR);
        return [&, p, cnt](int64_t o, auto... c) {
          const T bias = bvp[o - Cq];
          store_row_as(vp + (n * Cv + o - Cq) * HW + p, cnt, stream, [&](auto r, int64_t) { return r + bias; },
                       c...);
        };
      };
      for (int64_t pq = 0; pq * NR < np; ++pq) {
        const T* bp = panel.data() + pq * NR * C;
        if constexpr (kTwoPanels) {  // pairs of panels: one broadcast of W feeds two FMAs (1.08x at 64x180x320)
          if ((pq + 1) * NR < np) {
            auto q0 = epilogue_q(pq), q1 = epilogue_q(pq + 1), v0 = epilogue_v(pq), v1 = epilogue_v(pq + 1);
            rows_panel2<T, ALay::KMajor>(0, Cq, C, wk.data(), Co, bp, bp + NR * C, q0, q1);
            rows_panel2<T, ALay::KMajor>(Cq, Co, C, wk.data(), Co, bp, bp + NR * C, v0, v1);
            ++pq;
            continue;
          }
        }
        auto st_q = epilogue_q(pq), st_v = epilogue_v(pq);
        panel_rows<T>(0, Cq, C, wk.data(), Co, bp, st_q);
        panel_rows<T>(Cq, Co, C, wk.data(), Co, bp, st_v);
      }
    }
    stream_fence();
  });
}

// Checks x and the proj_qv weights (wq: (Cq, C, 1, 1), bq: (Cq), wv: (Cv, C, 1, 1), bv: (Cv)); returns {Cq, Cv}.
std::pair<int64_t, int64_t> check_proj_qv(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wv,
                                          const Tensor& bv) {
  check_image(x, kOp, "x");
  const int64_t C = x.size(1);
  TORCH_CHECK(wq.dim() == 4, "eimn_C (cpu): wq must be (Cq, C, 1, 1), got ", wq.sizes());
  TORCH_CHECK(wv.dim() == 4, "eimn_C (cpu): wv must be (Cv, C, 1, 1), got ", wv.sizes());
  const int64_t Cq = wq.size(0), Cv = wv.size(0);
  check_like(wq, kOp, "wq", x, {Cq, C, 1, 1});
  check_like(bq, kOp, "bq", x, {Cq});
  check_like(wv, kOp, "wv", x, {Cv, C, 1, 1});
  check_like(bv, kOp, "bv", x, {Cv});
  return {Cq, Cv};
}

std::tuple<Tensor, Tensor> proj_qv_forward(const Tensor& x_, const Tensor& wq_, const Tensor& bq_,
                                           const Tensor& wv_, const Tensor& bv_) {
  const auto qv = check_proj_qv(x_, wq_, bq_, wv_, bv_);
  const int64_t C = x_.size(1), Cq = qv.first, Cv = qv.second;
  Tensor x = x_.contiguous();
  Tensor q = pooled_empty({x.size(0), Cq, x.size(2), x.size(3)}, x.options());
  Tensor v = pooled_empty({x.size(0), Cv, x.size(2), x.size(3)}, x.options());
  if (x.numel() == 0 || q.numel() + v.numel() == 0) {
    if (q.numel()) q.copy_(at::gelu(bq_.view({1, Cq, 1, 1}).expand_as(q)));
    if (v.numel()) v.copy_(bv_.view({1, Cv, 1, 1}).expand_as(v));
    return {q, v};
  }
  Tensor wqv = at::cat({wq_.reshape({Cq, C}), wv_.reshape({Cv, C})}, 0).contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "proj_qv_forward", [&] {
    proj_qv_fwd_impl<scalar_t>(x, wqv, bq_.contiguous(), bv_.contiguous(), q, v);
  });
  return {q, v};
}

template <typename T>
void proj_qv_bwd_impl(const Tensor& gq, const Tensor& gv, const Tensor& x, const Tensor& wq, const Tensor& bq,
                      const Tensor& wv, Tensor& dx, Tensor& dwq, Tensor& dbq, Tensor& dwv, Tensor& dbv) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t Cq = wq.size(0), Cv = wv.size(0);
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P, ntask = N * nt;
  const T *xp = x.data_ptr<T>(), *wqp = wq.data_ptr<T>(), *bqp = bq.data_ptr<T>(), *wvp = wv.data_ptr<T>();
  const T *gqp = gq.data_ptr<T>(), *gvp = gv.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  // per task: dWq (Cq*C), dWv (Cv*C) in T; bias sums in double
  const int64_t LW = Cq * C + Cv * C, LB = Cq + Cv;
  std::vector<T> wpart(ntask * LW);
  std::vector<double> bpart(ntask * LB, 0.0);
  const std::vector<T> wq_k = pack_a(wqp, Cq, C, C, 1), wqT_k = pack_a(wqp, C, Cq, 1, C);
  const std::vector<T> wvT_k = pack_a(wvp, C, Cv, 1, C);
  at::parallel_for(0, ntask, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> pre(Cq * P);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nt, p0 = (t % nt) * P, np = std::min(P, HW - p0);
      const T* xt = xp + n * C * HW + p0;
      const T* gqt = gqp + n * Cq * HW + p0;
      const T* gvt = gvp + n * Cv * HW + p0;
      // pre = Wq x + bq; dpre = gq * gelu'(pre)
      gemm_apix<T>(Cq, np, C, wq_k.data(), xt, HW, pre.data(), P, false);
      for (int64_t o = 0; o < Cq; ++o) {
        T* b = pre.data() + o * P;
        const T* g = gqt + o * HW;
        const Vec<T> bias(bqp[o]);
        vec_for<T>(np, [&](int64_t i, int64_t c) {
          (Vec<T>::loadu(g + i, c) * vgelu_grad<T>(Vec<T>::loadu(b + i, c) + bias)).store(b + i, c);
        });
      }
      T* wp = wpart.data() + t * LW;
      double* bp = bpart.data() + t * LB;
      // dWq = dpre x^T ; dWv = gv x^T  (x^T: P x C view of the tile)
      gemm_nt<T>(Cq, C, np, pre.data(), P, xt, HW, wp, C);
      gemm_nt<T>(Cv, C, np, gvt, HW, xt, HW, wp + Cq * C, C);
      row_sums<T>(pre.data(), Cq, np, P, bp);
      row_sums<T>(gvt, Cv, np, HW, bp + Cq);
      // dx = Wq^T dpre + Wv^T gv
      T* dxt = dxp + n * C * HW + p0;
      gemm_apix<T>(C, np, Cq, wqT_k.data(), pre.data(), P, dxt, HW, false);
      gemm_apix<T>(C, np, Cv, wvT_k.data(), gvt, HW, dxt, HW, true);
    }
  });
  sum_rows<double>(wpart.data(), ntask, LW, LW, wpart.data());  // in place: row 0 holds the sums
  std::copy(wpart.data(), wpart.data() + Cq * C, dwq.data_ptr<T>());
  std::copy(wpart.data() + Cq * C, wpart.data() + LW, dwv.data_ptr<T>());
  std::vector<T> bs(LB);
  sum_rows<double>(bpart.data(), ntask, LB, LB, bs.data());
  std::copy(bs.begin(), bs.begin() + Cq, dbq.data_ptr<T>());
  std::copy(bs.begin() + Cq, bs.end(), dbv.data_ptr<T>());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> proj_qv_backward(const Tensor& gq_, const Tensor& gv_,
                                                                    const Tensor& x_, const Tensor& wq_,
                                                                    const Tensor& bq_, const Tensor& wv_,
                                                                    const Tensor& bv_) {
  const auto qv = check_proj_qv(x_, wq_, bq_, wv_, bv_);
  const int64_t N = x_.size(0), H = x_.size(2), W = x_.size(3), Cq = qv.first, Cv = qv.second;
  check_like(gq_, kOp, "grad_q", x_, {N, Cq, H, W});
  check_like(gv_, kOp, "grad_v", x_, {N, Cv, H, W});
  Tensor x = x_.contiguous(), gq = gq_.contiguous(), gv = gv_.contiguous();
  Tensor wq = wq_.contiguous(), wv = wv_.contiguous(), bq = bq_.contiguous();
  Tensor dx = pooled_empty_like(x), dwq = at::zeros_like(wq), dbq = at::zeros_like(bq_);
  Tensor dwv = at::zeros_like(wv), dbv = at::zeros_like(bv_);
  if (x.numel() == 0) {
    dx.zero_();
    return {dx, dwq, dbq, dwv, dbv};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "proj_qv_backward", [&] {
    proj_qv_bwd_impl<scalar_t>(gq, gv, x, wq, bq, wv, dx, dwq, dbq, dwv, dbv);
  });
  return {dx, dwq, dbq, dwv, dbv};
}

// ================================================================ gate_out
// out = Wo (SiLU(Wf y + bf) * v) + bo [+ res]. y, v: (N, C, H, W); wf: (C, C, 1, 1); wo: (Co, C, 1, 1); res
// (inference, molrcm_infer_forward): (N, Co, H, W) or undefined, added last (the bits of out + res).
// bf16: the Wf and Wo GEMMs in bfloat16 with float32 sums (cpu_gemm_bf16.h; y packed straight into
// bfloat16 pairs, m converted per panel; pairs of panels as in float32); the epilogues are the same.
// wv, bv defined (inference, where the residual is the layer's input x): v = Wv res + bv is computed here, per
// panel from the residual's packed panel, in float32 (wv: (C, Co)); v is then undefined. The same FMA chains as
// proj_qv's v rows (the same bits), without v's image-sized store and load.
template <typename T>
void gate_out_fwd_impl(const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf, const Tensor& wo,
                       const Tensor& bo, Tensor& out, bool bf16 = false, const Tensor& res = Tensor(),
                       const Tensor& wv = Tensor(), const Tensor& bv = Tensor()) {
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3), Co = wo.size(0);
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P;
  const T *yp = y.data_ptr<T>(), *wfp = wf.data_ptr<T>(), *bfp = bf.data_ptr<T>();
  const T *wop = wo.data_ptr<T>(), *bop = bo.data_ptr<T>();
  const T* rp = res.defined() ? res.data_ptr<T>() : nullptr;
  const bool v_from_res = wv.defined();
  const T* vp = v_from_res ? nullptr : v.data_ptr<T>();
  const T* bvp = v_from_res ? bv.data_ptr<T>() : nullptr;
  const std::vector<T> wv_k = v_from_res ? pack_a(wv.data_ptr<T>(), C, Co, Co, 1) : std::vector<T>();
  T* op = out.data_ptr<T>();
  const std::vector<T> wf_k = bf16 ? std::vector<T>() : pack_a(wfp, C, C, C, 1);
  const std::vector<T> wo_k = bf16 ? std::vector<T>() : pack_a(wop, Co, C, C, 1);
  const bf16::Weights wf_b = bf16 ? bf16_weights<T>(wfp, C, C) : bf16::Weights();
  const bf16::Weights wo_b = bf16 ? bf16_weights<T>(wop, Co, C) : bf16::Weights();
  const bool stream = stream_output(int64_t(sizeof(T)) * out.numel());  // read by the next op after the whole image
  // Per panel of NR pixels: m = SiLU(Wf y + bf) * v goes from the accumulators into a K x NR panel
  // (L1-resident), which feeds the Wo GEMM right away; out is stored once, with the bias. Where the micro-kernel
  // takes two panels at once (AVX-512: one broadcast of W feeds two FMAs), both GEMMs run on pairs of panels.
  constexpr int64_t NR = 2 * (32 / sizeof(T));
  const int64_t pn = ((P + NR - 1) / NR) * NR;  // a tile's pixels in whole panels
  at::parallel_for(0, N * nt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(bf16 ? 0 : pn * C), mpan(2 * NR * C), vpanel(pn * C), rpanel(rp ? pn * Co : 0);
    std::vector<uint32_t> pairs(bf16 ? pn * wf_b.KP : 0), mpairs(bf16 ? 2 * NR * wo_b.KP : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nt, p0 = (t % nt) * P, np = std::min(P, HW - p0);
      if (bf16) bf16_pack_pairs<T>(C, np, yp + n * C * HW + p0, HW, pairs.data());
      else pack_b<T>(C, np, yp + n * C * HW + p0, HW, panel.data());
      // v in panels too: the epilogue reads each channel's NR values from L1, not one cache line from each of C
      // image rows (C streams HW apart per panel; those loads held the gate_out forward at half proj_qv's rate).
      if (!v_from_res) pack_b<T>(C, np, vp + n * C * HW + p0, HW, vpanel.data());
      if (rp) pack_b<T>(Co, np, rp + n * Co * HW + p0, HW, rpanel.data());  // the residual likewise
      // v_from_res: v's rows of panel pq (and pq + 1 where two) into vpanel, from the residual's panels
      auto epilogue_v = [&](int64_t pq) {
        T* vpan = vpanel.data() + pq * NR * C;
        return [&, vpan](int64_t c, auto... a) {
          const T bias = bvp[c];
          store_row_as(vpan + c * NR, NR, false, [&](auto r, int64_t) { return r + bias; }, a...);
        };
      };
      auto compute_v = [&](int64_t pq, bool two) {
        if (!v_from_res) return;
        const T* rpan = rpanel.data() + pq * NR * Co;
        auto st_v0 = epilogue_v(pq);
        if constexpr (kTwoPanels) {
          if (two) {
            auto st_v1 = epilogue_v(pq + 1);
            return rows_panel2<T, ALay::KMajor>(0, C, Co, wv_k.data(), C, rpan, rpan + NR * Co, st_v0, st_v1);
          }
        }
        panel_rows<T>(0, C, Co, wv_k.data(), C, rpan, st_v0);
        if (two) {
          auto st_v1 = epilogue_v(pq + 1);
          panel_rows<T>(0, C, Co, wv_k.data(), C, rpan + NR * Co, st_v1);
        }
      };
      // Epilogues of panel pq (pixels p0 + pq * NR on): m into the m panel mp, out with the bias; rows come as one
      // 64-byte part or two halves.
      auto epilogue_m = [&](int64_t pq, T* mp) {
        const T* vpan = vpanel.data() + pq * NR * C;
        return [&, vpan, mp](int64_t c, auto... a) {
          const T bias = bfp[c];
          store_row_as(mp + c * NR, NR, false, [&](auto r, int64_t off) {
            auto f = r + bias;
            return f * v_sigmoid(f) * load_vec<decltype(f)>(vpan + c * NR + off);
          }, a...);
        };
      };
      auto epilogue_o = [&](int64_t pq) {
        const int64_t p = p0 + pq * NR, cnt = std::min(NR, np - pq * NR);
        const T* rpan = rp ? rpanel.data() + pq * NR * Co : nullptr;
        return [&, p, cnt, rpan](int64_t o, auto... a) {
          const T bias = bop[o];
          store_row_as(op + (n * Co + o) * HW + p, cnt, stream, [&](auto r, int64_t off) {
            r = r + bias;
            if (rpan) r = r + load_vec<decltype(r)>(rpan + o * NR + off);
            return r;
          }, a...);
        };
      };
      for (int64_t pq = 0; pq * NR < np; ++pq) {
        if (bf16 && (pq + 2) * NR <= np) {  // pairs of full panels at every level (a last partial one alone, below)
          compute_v(pq, true);
          auto st_m0 = epilogue_m(pq, mpan.data()), st_m1 = epilogue_m(pq + 1, mpan.data() + NR * C);
          const int64_t ps = NR * wf_b.KP, mps = NR * wo_b.KP;
          bf16_rows2<T>(0, C, wf_b, pairs.data() + pq * ps, pairs.data() + (pq + 1) * ps, st_m0, st_m1);
          bf16_to_pairs<T>(mpan.data(), C, mpairs.data());
          bf16_to_pairs<T>(mpan.data() + NR * C, C, mpairs.data() + mps);
          auto st_o0 = epilogue_o(pq), st_o1 = epilogue_o(pq + 1);
          bf16_rows2<T>(0, Co, wo_b, mpairs.data(), mpairs.data() + mps, st_o0, st_o1);
          ++pq;
          continue;
        }
        if constexpr (kTwoPanels) {
          if (!bf16 && (pq + 1) * NR < np) {
            compute_v(pq, true);
            auto st_m0 = epilogue_m(pq, mpan.data()), st_m1 = epilogue_m(pq + 1, mpan.data() + NR * C);
            rows_panel2<T, ALay::KMajor>(0, C, C, wf_k.data(), C, panel.data() + pq * NR * C,
                                         panel.data() + (pq + 1) * NR * C, st_m0, st_m1);
            auto st_o0 = epilogue_o(pq), st_o1 = epilogue_o(pq + 1);
            rows_panel2<T, ALay::KMajor>(0, Co, C, wo_k.data(), Co, mpan.data(), mpan.data() + NR * C, st_o0, st_o1);
            ++pq;
            continue;
          }
        }
        compute_v(pq, false);
        auto st_m = epilogue_m(pq, mpan.data());
        auto st_o = epilogue_o(pq);
        if (bf16) {
          bf16_rows<T>(0, C, wf_b, pairs.data() + pq * NR * wf_b.KP, st_m);
          bf16_to_pairs<T>(mpan.data(), C, mpairs.data());
          bf16_rows<T>(0, Co, wo_b, mpairs.data(), st_o);
          continue;
        }
        panel_rows<T>(0, C, C, wf_k.data(), C, panel.data() + pq * NR * C, st_m);
        panel_rows<T>(0, Co, C, wo_k.data(), Co, mpan.data(), st_o);
      }
    }
    stream_fence();
  });
}

// Checks y, v and the gate_out weights (wf: (C, C, 1, 1), bf: (C), wo: (Co, C, 1, 1), bo: (Co)); returns Co.
int64_t check_gate_out(const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf, const Tensor& wo,
                       const Tensor& bo) {
  check_image(y, kOp, "y");
  const int64_t C = y.size(1);
  check_like(v, kOp, "v", y, y.sizes());
  check_like(wf, kOp, "wf", y, {C, C, 1, 1});
  check_like(bf, kOp, "bf", y, {C});
  TORCH_CHECK(wo.dim() == 4, "eimn_C (cpu): wo must be (Co, C, 1, 1), got ", wo.sizes());
  const int64_t Co = wo.size(0);
  check_like(wo, kOp, "wo", y, {Co, C, 1, 1});
  check_like(bo, kOp, "bo", y, {Co});
  return Co;
}

// res: undefined, or (N, Co, H, W) added to out (checked by the caller). wv, bv: undefined, or v's weights
// ((C, Co, 1, 1), (C)) when v = Wv res + bv is to be computed in the kernel (res defined; v_ is then ignored).
Tensor gate_out_run(const Tensor& y_, const Tensor& v_, const Tensor& wf_, const Tensor& bf_, const Tensor& wo_,
                    const Tensor& bo_, bool bf16, const Tensor& res_ = Tensor(), const Tensor& wv_ = Tensor(),
                    const Tensor& bv_ = Tensor()) {
  const bool v_from_res = wv_.defined();
  const int64_t Co = check_gate_out(y_, v_from_res ? y_ : v_, wf_, bf_, wo_, bo_);
  const int64_t N = y_.size(0), C = y_.size(1), H = y_.size(2), W = y_.size(3);
  Tensor out = pooled_empty({N, Co, H, W}, y_.options());
  if (out.numel() == 0) return out;
  if (C == 0) {
    out.copy_(bo_.view({1, Co, 1, 1}).expand_as(out));
    return res_.defined() ? out.add_(res_) : out;
  }
  Tensor y = y_.contiguous(), res = res_.defined() ? res_.contiguous() : res_;
  Tensor v = v_from_res ? Tensor() : v_.contiguous();
  Tensor wv = v_from_res ? wv_.reshape({C, Co}).contiguous() : wv_, bv = v_from_res ? bv_.contiguous() : bv_;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "gate_out_forward", [&] {
    gate_out_fwd_impl<scalar_t>(y, v, wf_.contiguous(), bf_.contiguous(), wo_.contiguous(), bo_.contiguous(), out, bf16,
                                res, wv, bv);
  });
  return out;
}

Tensor gate_out_forward(const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf, const Tensor& wo,
                        const Tensor& bo) {
  return gate_out_run(y, v, wf, bf, wo, bo, false);
}

template <typename T>
void gate_out_bwd_impl(const Tensor& g, const Tensor& y, const Tensor& v, const Tensor& wf, const Tensor& bf,
                       const Tensor& wo, Tensor& dy, Tensor& dv, Tensor& dwf, Tensor& dbf, Tensor& dwo,
                       Tensor& dbo) {
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3), Co = wo.size(0);
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P, ntask = N * nt;
  const T *yp = y.data_ptr<T>(), *vp = v.data_ptr<T>(), *wfp = wf.data_ptr<T>(), *bfp = bf.data_ptr<T>();
  const T *wop = wo.data_ptr<T>(), *gp = g.data_ptr<T>();
  T *dyp = dy.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  const int64_t LW = Co * C + C * C, LB = Co + C;
  std::vector<T> wpart(ntask * LW);
  std::vector<double> bpart(ntask * LB, 0.0);
  const std::vector<T> wf_k = pack_a(wfp, C, C, C, 1), wfT_k = pack_a(wfp, C, C, 1, C);
  const std::vector<T> woT_k = pack_a(wop, C, Co, 1, C);
  at::parallel_for(0, ntask, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> a(C * P), m(C * P), dm(C * P);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nt, p0 = (t % nt) * P, np = std::min(P, HW - p0);
      const T* yt = yp + n * C * HW + p0;
      const T* gt = gp + n * Co * HW + p0;
      // a = Wf y + bf ; m = silu(a) * v
      gemm_apix<T>(C, np, C, wf_k.data(), yt, HW, a.data(), P, false);
      for (int64_t c = 0; c < C; ++c) {
        T* ar = a.data() + c * P;
        T* mr = m.data() + c * P;
        const T* vv = vp + (n * C + c) * HW + p0;
        const Vec<T> bias(bfp[c]);
        vec_for<T>(np, [&](int64_t i, int64_t k) {
          Vec<T> f = Vec<T>::loadu(ar + i, k) + bias;
          f.store(ar + i, k);
          (f * vsigmoid<T>(f) * Vec<T>::loadu(vv + i, k)).store(mr + i, k);
        });
      }
      T* wp = wpart.data() + t * LW;
      double* bp = bpart.data() + t * LB;
      // dWo = g m^T ; dbo = sum g ; dm = Wo^T g
      gemm_nt<T>(Co, C, np, gt, HW, m.data(), P, wp, C);
      row_sums<T>(gt, Co, np, HW, bp);
      gemm_apix<T>(C, np, Co, woT_k.data(), gt, HW, dm.data(), P, false);
      // dv = dm * silu(a) ; da = dm * v * silu'(a)  (stored in dm)
      for (int64_t c = 0; c < C; ++c) {
        const T* ar = a.data() + c * P;
        T* dr = dm.data() + c * P;
        const T* vv = vp + (n * C + c) * HW + p0;
        T* dvv = dvp + (n * C + c) * HW + p0;
        vec_for<T>(np, [&](int64_t i, int64_t k) {
          Vec<T> f = Vec<T>::loadu(ar + i, k), d = Vec<T>::loadu(dr + i, k);
          Vec<T> s = vsigmoid<T>(f);
          (d * f * s).store(dvv + i, k);
          Vec<T> sg = s * (Vec<T>(T(1)) + f * (Vec<T>(T(1)) - s));
          (d * Vec<T>::loadu(vv + i, k) * sg).store(dr + i, k);
        });
      }
      // dWf = da y^T ; dbf = sum da ; dy = Wf^T da
      gemm_nt<T>(C, C, np, dm.data(), P, yt, HW, wp + Co * C, C);
      row_sums<T>(dm.data(), C, np, P, bp + Co);
      gemm_apix<T>(C, np, C, wfT_k.data(), dm.data(), P, dyp + n * C * HW + p0, HW, false);
    }
  });
  sum_rows<double>(wpart.data(), ntask, LW, LW, wpart.data());
  std::copy(wpart.data(), wpart.data() + Co * C, dwo.data_ptr<T>());
  std::copy(wpart.data() + Co * C, wpart.data() + LW, dwf.data_ptr<T>());
  std::vector<T> bs(LB);
  sum_rows<double>(bpart.data(), ntask, LB, LB, bs.data());
  std::copy(bs.begin(), bs.begin() + Co, dbo.data_ptr<T>());
  std::copy(bs.begin() + Co, bs.end(), dbf.data_ptr<T>());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gate_out_backward(
    const Tensor& g_, const Tensor& y_, const Tensor& v_, const Tensor& wf_, const Tensor& bf_, const Tensor& wo_,
    const Tensor& bo_) {
  const int64_t Co = check_gate_out(y_, v_, wf_, bf_, wo_, bo_);
  const int64_t N = y_.size(0), H = y_.size(2), W = y_.size(3);
  check_like(g_, kOp, "grad_out", y_, {N, Co, H, W});
  Tensor y = y_.contiguous(), v = v_.contiguous(), g = g_.contiguous();
  Tensor wf = wf_.contiguous(), wo = wo_.contiguous();
  // dy and dv are written in full by the kernel (no zero fill of image-sized outputs).
  Tensor dy = pooled_empty_like(y), dv = pooled_empty_like(v), dwf = at::zeros_like(wf), dbf = at::zeros_like(bf_);
  Tensor dwo = at::zeros_like(wo), dbo = at::zeros_like(bo_);
  if (y.numel() == 0) {
    if (g.numel()) dbo.copy_(g.sum({0, 2, 3}));
    return {dy, dv, dwf, dbf, dwo, dbo};
  }
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "gate_out_backward", [&] {
    gate_out_bwd_impl<scalar_t>(g, y, v, wf, bf_.contiguous(), wo, dy, dv, dwf, dbf, dwo, dbo);
  });
  return {dy, dv, dwf, dbf, dwo, dbo};
}

// ================================================================ dw_mix
constexpr int kDwBlockedMaxW = 30;  // measured at 7..56 pixels wide: see dw_blocked_max_w

struct DwMixGeom {
  int64_t N, C, H, W, c1, c2, c3;
  int K0, K1, K2;
  int64_t d0, d1, d2, P0, P1, P2, Pm, Hp, Wp;
  // Pointer to (-P, -P) of a plane buffer (padding Pm, row stride Wp) for a conv with padding P.
  template <typename T> T* at_pad(T* buf, int64_t P) const { return buf + (Pm - P) * Wp + (Pm - P); }
  template <typename T> T* interior(T* buf) const { return buf + Pm * Wp + Pm; }
};

DwMixGeom dw_mix_check(const Tensor& q, const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1,
                       const Tensor& w2, const Tensor& b2, int64_t c1, int64_t c2, int64_t d0, int64_t d1,
                       int64_t d2) {
  check_image(q, kOp, "q");
  DwMixGeom g{};
  g.N = q.size(0), g.C = q.size(1), g.H = q.size(2), g.W = q.size(3);
  TORCH_CHECK(c1 >= 0 && c2 >= 0 && c1 + c2 <= g.C, "eimn_C (cpu): channel split c1=", c1, ", c2=", c2,
              " does not fit ", g.C, " channels");
  TORCH_CHECK(d0 >= 1 && d1 >= 1 && d2 >= 1, "eimn_C (cpu): dilations must be >= 1, got ", d0, ", ", d1, ", ",
              d2);
  g.c1 = c1, g.c2 = c2, g.c3 = g.C - c1 - c2;
  auto ksize = [&](const Tensor& w, const char* name, int64_t ch) {
    TORCH_CHECK(w.dim() == 4 && w.size(2) == w.size(3) && w.size(2) % 2 == 1, "eimn_C (cpu): ", name,
                " must be (", ch, ", 1, K, K) with odd K, got ", w.sizes());
    check_like(w, kOp, name, q, {ch, 1, w.size(2), w.size(2)});
    return int(w.size(2));
  };
  g.K0 = ksize(w0, "w0", g.C);
  g.K1 = ksize(w1, "w1", g.c1);
  g.K2 = ksize(w2, "w2", g.c3);
  check_like(b0, kOp, "b0", q, {g.C});
  check_like(b1, kOp, "b1", q, {g.c1});
  check_like(b2, kOp, "b2", q, {g.c3});
  g.d0 = d0, g.d1 = d1, g.d2 = d2;
  g.P0 = d0 * (g.K0 - 1) / 2, g.P1 = d1 * (g.K1 - 1) / 2, g.P2 = d2 * (g.K2 - 1) / 2;
  g.Pm = std::max(g.P0, std::max(g.c1 > 0 ? g.P1 : 0, g.c3 > 0 ? g.P2 : 0));
  g.Hp = g.H + 2 * g.Pm, g.Wp = g.W + 2 * g.Pm;
  return g;
}

// Widths below which dw_mix's forward runs channel-blocked (molrcm_dwblock.h) rather than per plane; the
// environment variable EIMN_DW_BLOCKED_MAX_W overrides it (read once; 0 = never, for A/B timing).
int64_t dw_blocked_max_w() {
  static const int64_t v = [] {
    const char* e = std::getenv("EIMN_DW_BLOCKED_MAX_W");
    return e != nullptr ? std::max<int64_t>(0, std::atoll(e)) : int64_t(kDwBlockedMaxW);
  }();
  return v;
}

template <typename T>
void copy_plane(const T* src, int64_t H, int64_t W, T* dst, int64_t ldd) {
  for (int64_t y = 0; y < H; ++y) std::copy(src + y * W, src + y * W + W, dst + y * ldd);
}

// The (image, channel) planes of dw_mix dealt into at most one bin per thread, of about equal cost (longest first,
// each to the bin with the least so far; cost: the taps of the plane's convs, which the backward runs about twice
// each: the same proportions). The
// channel groups cost differently (EIMN's 64 channels: 24 planes of a 5x5 and a 5x5, 8 of one 5x5, 32 of a 5x5 and
// a 7x7), so at::parallel_for's contiguous halves gave one of two threads 1400 taps and the other 2368. Every plane
// is computed alone (the backward's weight gradients per plane, summed afterwards in a fixed order), so the deal
// changes no result.
std::vector<std::vector<int64_t>> plane_bins(const DwMixGeom& g) {
  const int64_t n = g.N * g.C, nb = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  auto cost = [&](int64_t t) {
    const int64_t c = t % g.C;
    const int64_t second = c < g.c1 ? g.K1 * g.K1 : c < g.c1 + g.c2 ? 0 : g.K2 * g.K2;
    return g.K0 * g.K0 + second;
  };
  std::vector<int64_t> order(n);
  for (int64_t t = 0; t < n; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost(a) > cost(b); });
  std::vector<std::vector<int64_t>> bins(nb);
  std::vector<int64_t> load(nb, 0);
  for (int64_t t : order) {
    const int64_t b = std::min_element(load.begin(), load.end()) - load.begin();
    bins[b].push_back(t);
    load[b] += cost(t);
  }
  for (auto& b : bins) std::sort(b.begin(), b.end());  // each thread's planes in memory order
  return bins;
}

template <typename T>
void dw_mix_fwd_impl(const DwMixGeom& g, const Tensor& q, const Tensor& w0, const Tensor& b0, const Tensor& w1,
                     const Tensor& b1, const Tensor& w2, const Tensor& b2, Tensor& out) {
  const T *qp = q.data_ptr<T>(), *w0p = w0.data_ptr<T>(), *b0p = b0.data_ptr<T>();
  const T *w1p = w1.data_ptr<T>(), *b1p = b1.data_ptr<T>(), *w2p = w2.data_ptr<T>(), *b2p = b2.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t HW = g.H * g.W;
  if (g.W < dw_blocked_max_w())  // narrow images: channel-blocked vectors (molrcm_dwblock.h)
    return dw_mix_fwd_blocked<T>(g, qp, w0p, b0p, w1p, b1p, w2p, b2p, op);
  const bool stream = stream_output(int64_t(sizeof(T)) * out.numel());  // gate_out reads y after the whole image
  const auto bins = plane_bins(g);
  at::parallel_for(0, int64_t(bins.size()), 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> qb(g.Hp * g.Wp, T(0)), rb(g.Hp * g.Wp, T(0));  // zero borders stay zero
    for (int64_t b = b0; b < b1; ++b)
    for (const int64_t t : bins[b]) {
      const int64_t c = t % g.C;
      copy_plane(qp + t * HW, g.H, g.W, g.interior(qb.data()), g.Wp);
      T* dst = op + t * HW;
      const T* q0 = g.at_pad(qb.data(), g.P0);
      if (c >= g.c1 && c < g.c1 + g.c2) {  // identity group: y = r
        dilated_dw_plane<T>(q0, g.Wp, g.H, g.W, w0p + c * g.K0 * g.K0, g.K0, g.d0, b0p[c], dst, g.W, stream);
        continue;
      }
      dilated_dw_plane<T>(q0, g.Wp, g.H, g.W, w0p + c * g.K0 * g.K0, g.K0, g.d0, b0p[c], g.interior(rb.data()), g.Wp);
      if (c < g.c1) {
        dilated_dw_plane<T>(g.at_pad(rb.data(), g.P1), g.Wp, g.H, g.W, w1p + c * g.K1 * g.K1, g.K1, g.d1, b1p[c], dst,
                            g.W, stream);
      } else {
        const int64_t j = c - g.c1 - g.c2;
        dilated_dw_plane<T>(g.at_pad(rb.data(), g.P2), g.Wp, g.H, g.W, w2p + j * g.K2 * g.K2, g.K2, g.d2, b2p[j], dst,
                            g.W, stream);
      }
    }
    stream_fence();
  });
}

Tensor dw_mix_forward(const Tensor& q_, const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1,
                      const Tensor& w2, const Tensor& b2, int64_t c1, int64_t c2, int64_t d0, int64_t d1,
                      int64_t d2) {
  DwMixGeom g = dw_mix_check(q_, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2);
  Tensor q = q_.contiguous();
  Tensor out = pooled_empty_like(q);
  if (q.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "dw_mix_forward", [&] {
    dw_mix_fwd_impl<scalar_t>(g, q, w0.contiguous(), b0.contiguous(), w1.contiguous(), b1.contiguous(),
                              w2.contiguous(), b2.contiguous(), out);
  });
  return out;
}

template <typename T>
void flip_kernel(const T* w, int K, T* out) {
  for (int i = 0; i < K * K; ++i) out[i] = w[K * K - 1 - i];
}

template <typename T>
void dw_mix_bwd_impl(const DwMixGeom& g, const Tensor& gy, const Tensor& q, const Tensor& w0, const Tensor& b0,
                     const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, Tensor& dq,
                     Tensor& dw0, Tensor& db0, Tensor& dw1, Tensor& db1, Tensor& dw2, Tensor& db2) {
  const T *qp = q.data_ptr<T>(), *gp = gy.data_ptr<T>(), *w0p = w0.data_ptr<T>(), *b0p = b0.data_ptr<T>();
  const T *w1p = w1.data_ptr<T>(), *b1p = b1.data_ptr<T>(), *w2p = w2.data_ptr<T>(), *b2p = b2.data_ptr<T>();
  T* dqp = dq.data_ptr<T>();
  const int64_t HW = g.H * g.W, Kg = std::max(g.K1, g.K2);
  // per (n, c): [dw0 (K0^2), db0, dw_second (Kg^2), db_second]
  const int64_t L = g.K0 * g.K0 + 1 + Kg * Kg + 1;
  std::vector<double> part(g.N * g.C * L, 0.0);
  const auto bins = plane_bins(g);
  at::parallel_for(0, int64_t(bins.size()), 1, [&](int64_t b0, int64_t b1) {
    const int64_t S = g.Hp * g.Wp;
    std::vector<T> qb(S, T(0)), rb(S, T(0)), gb(S, T(0)), db(S, T(0));
    std::vector<T> wf(std::max<int64_t>(g.K0 * g.K0, Kg * Kg));
    for (int64_t b = b0; b < b1; ++b)
    for (const int64_t t : bins[b]) {
      const int64_t c = t % g.C;
      double* pp = part.data() + t * L;
      copy_plane(qp + t * HW, g.H, g.W, g.interior(qb.data()), g.Wp);
      const T* q0 = g.at_pad(qb.data(), g.P0);
      const T* w0c = w0p + c * g.K0 * g.K0;
      const T* gyt = gp + t * HW;
      if (c >= g.c1 && c < g.c1 + g.c2) {  // identity group: dr = gy
        copy_plane(gyt, g.H, g.W, g.interior(db.data()), g.Wp);
      } else {
        const bool first = c < g.c1;
        const int64_t j = first ? c : c - g.c1 - g.c2;
        const int K = first ? g.K1 : g.K2;
        const int64_t d = first ? g.d1 : g.d2, P = first ? g.P1 : g.P2;
        const T* wk = (first ? w1p : w2p) + j * K * K;
        // r (recomputed) and its second-conv gradients
        dilated_dw_plane<T>(q0, g.Wp, g.H, g.W, w0c, g.K0, g.d0, b0p[c], g.interior(rb.data()), g.Wp);
        dw_plane_wgrad<T>(g.at_pad(rb.data(), P), g.Wp, g.H, g.W, gyt, g.W, K, d, pp + g.K0 * g.K0 + 1,
                          pp + g.K0 * g.K0 + 1 + Kg * Kg);
        // dr = conv(gy, flipped w)
        copy_plane(gyt, g.H, g.W, g.interior(gb.data()), g.Wp);
        flip_kernel(wk, K, wf.data());
        dilated_dw_plane<T>(g.at_pad(gb.data(), P), g.Wp, g.H, g.W, wf.data(), K, d, T(0), g.interior(db.data()), g.Wp);
      }
      // first conv: dw0, db0, dq
      dw_plane_wgrad<T>(q0, g.Wp, g.H, g.W, g.interior(db.data()), g.Wp, g.K0, g.d0, pp, pp + g.K0 * g.K0);
      flip_kernel(w0c, g.K0, wf.data());
      dilated_dw_plane<T>(g.at_pad(db.data(), g.P0), g.Wp, g.H, g.W, wf.data(), g.K0, g.d0, T(0), dqp + t * HW, g.W);
    }
  });
  (void)b1p;
  (void)b2p;
  // Reduce over n in order.
  T *dw0p = dw0.data_ptr<T>(), *db0p = db0.data_ptr<T>(), *dw1p = dw1.data_ptr<T>(), *db1p = db1.data_ptr<T>();
  T *dw2p = dw2.data_ptr<T>(), *db2p = db2.data_ptr<T>();
  for (int64_t c = 0; c < g.C; ++c) {
    std::vector<double> s(L, 0.0);
    for (int64_t n = 0; n < g.N; ++n) {
      const double* pp = part.data() + (n * g.C + c) * L;
      for (int64_t l = 0; l < L; ++l) s[l] += pp[l];
    }
    const int64_t K0s = g.K0 * g.K0;
    for (int64_t i = 0; i < K0s; ++i) dw0p[c * K0s + i] = T(s[i]);
    db0p[c] = T(s[K0s]);
    if (c < g.c1) {
      for (int64_t i = 0; i < g.K1 * g.K1; ++i) dw1p[c * g.K1 * g.K1 + i] = T(s[K0s + 1 + i]);
      db1p[c] = T(s[K0s + 1 + Kg * Kg]);
    } else if (c >= g.c1 + g.c2) {
      const int64_t j = c - g.c1 - g.c2;
      for (int64_t i = 0; i < g.K2 * g.K2; ++i) dw2p[j * g.K2 * g.K2 + i] = T(s[K0s + 1 + i]);
      db2p[j] = T(s[K0s + 1 + Kg * Kg]);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dw_mix_backward(
    const Tensor& gy_, const Tensor& q_, const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1,
    const Tensor& w2, const Tensor& b2, int64_t c1, int64_t c2, int64_t d0, int64_t d1, int64_t d2) {
  DwMixGeom g = dw_mix_check(q_, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2);
  check_like(gy_, kOp, "grad_y", q_, q_.sizes());
  Tensor q = q_.contiguous(), gy = gy_.contiguous();
  Tensor dq = pooled_empty_like(q), dw0 = at::zeros_like(w0), db0 = at::zeros_like(b0);  // dq: written in full
  Tensor dw1 = at::zeros_like(w1), db1 = at::zeros_like(b1), dw2 = at::zeros_like(w2), db2 = at::zeros_like(b2);
  if (q.numel() == 0) return {dq, dw0, db0, dw1, db1, dw2, db2};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "dw_mix_backward", [&] {
    dw_mix_bwd_impl<scalar_t>(g, gy, q, w0.contiguous(), b0.contiguous(), w1.contiguous(), b1.contiguous(),
                              w2.contiguous(), b2.contiguous(), dq, dw0, db0, dw1, db1, dw2, db2);
  });
  return {dq, dw0, db0, dw1, db1, dw2, db2};
}

// ================================================================ whole layer, inference
// The MOLRCM layer without autograd in one call (the folded model's CPU path): q, v = proj_qv(x), y = dw_mix(q),
// out = gate_out(y, v). bf16: gate_out's two GEMMs (Wf, Wo) in bfloat16 with float32 sums (float32 tensors, a CPU
// with AVX512-BF16; an error otherwise). Wq / Wv stay float32: they read the residual stream, and rounding it to
// bfloat16 cost EIMN_L x3 0.007 dB PSNR on Set5 and Set14, against <= 0.0024 dB for the other GEMMs in bfloat16 (all
// five official weights). The depthwise convolutions and every epilogue stay float32.
// residual: a tensor of the output's shape added in gate_out's epilogue (the EIMN block's x + attn(x), same bits
// as adding it afterwards, without a pass of its own), or none.
Tensor molrcm_infer_forward(const Tensor& x, const Tensor& wq, const Tensor& bq, const Tensor& wv, const Tensor& bv,
                            const Tensor& w0, const Tensor& b0, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                            const Tensor& b2, const Tensor& wf, const Tensor& bf, const Tensor& wo, const Tensor& bo,
                            int64_t c1, int64_t c2, int64_t d0, int64_t d1, int64_t d2, bool bf16,
                            const std::optional<Tensor>& residual) {
  if (bf16) check_bf16(x, "eimn_C::molrcm_infer_forward (cpu)");
  if (residual.has_value())
    check_like(*residual, kOp, "residual", x, {x.size(0), wo.size(0), x.size(2), x.size(3)});
  // The EIMN block passes its input as the residual (x + attn(x)): then v = Wv x + bv is computed in gate_out from
  // the residual's panels (same bits), and proj_qv computes q alone: v's image-sized store and load are gone.
  // A 1x64x180x320 layer moves 29 MB less of its ~130 MB.
  const bool v_from_x = residual.has_value() && residual->is_same(x) && wv.dim() == 4 && wv.size(0) == wf.size(1) &&
                        wv.size(1) == wo.size(0);
  if (v_from_x) check_proj_qv(x, wq, bq, wv, bv);  // v's weights checked here: proj_qv gets none of them
  auto [q, v] = v_from_x ? proj_qv_forward(x, wq, bq, wv.narrow(0, 0, 0), bv.narrow(0, 0, 0))
                         : proj_qv_forward(x, wq, bq, wv, bv);
  const Tensor y = dw_mix_forward(q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2);
  if (v_from_x) return gate_out_run(y, Tensor(), wf, bf, wo, bo, bf16, x, wv, bv);
  return gate_out_run(y, v, wf, bf, wo, bo, bf16, residual.has_value() ? *residual : Tensor());
}

}  // namespace
}  // namespace molrcm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// This level's kernels of the molrcm ops (cpu_register.h; cpu_dispatch.cpp registers one level's).
void register_molrcm(torch::Library& m) {
  m.impl("dw_mix_forward", &molrcm::dw_mix_forward);
  m.impl("dw_mix_backward", &molrcm::dw_mix_backward);
  m.impl("proj_qv_forward", &molrcm::proj_qv_forward);
  m.impl("proj_qv_backward", &molrcm::proj_qv_backward);
  m.impl("gate_out_forward", &molrcm::gate_out_forward);
  m.impl("gate_out_backward", &molrcm::gate_out_backward);
  m.impl("molrcm_infer_forward", &molrcm::molrcm_infer_forward);
}
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
