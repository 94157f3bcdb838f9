// CPU (OpenMP) kernels of conv1x1, float32 / float64: a 1x1 convolution with its epilogue fused,
//   out = act(W x + b) [* gate] [+ residual]        act: 0 identity, 1 exact GELU
// the building block of large-kernel attention (VAN's LKA: gate = the block input; proj_1 + GELU; proj_2 +
// residual). Schemas: csrc/eimn_ops.cpp; semantics: eimn_kernels/reference.py (conv1x1).
//
// Layout: contiguous NCHW; w (Co, C, 1, 1); gate and residual (N, Co, H, W) or empty (absent). Work items are
// pixel tiles of one image (cpu_tiles.h); the forward stores each output row from the GEMM's accumulators with the
// epilogue applied (no output-sized temporary); the backward recomputes W x + b per tile where the epilogue needs
// it, and sums the weight-gradient partials of the tiles in a fixed order (results independent of thread count).
#include "cpu/cpu_isa.h"
#include "cpu/cpu_register.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/cpu_checks.h"
#include "cpu/cpu_gemm.h"
#include "cpu/cpu_pool.h"
#include "cpu/cpu_reduce.h"
#include "cpu/cpu_tiles.h"
#include "cpu/cpu_vmath.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace conv1x1 {
namespace {

using at::Tensor;

constexpr const char* kOp = "conv1x1 cpu";
constexpr int64_t kActNone = 0, kActGelu = 1;

// Checks x, the weights, gate and residual; returns Co.
int64_t check_inputs(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gate, const Tensor& res,
                     int64_t act) {
  check_image(x, kOp, "x");
  TORCH_CHECK(act == kActNone || act == kActGelu, kOp, ": act must be 0 (identity) or 1 (GELU), got ", act);
  TORCH_CHECK(w.dim() == 4, kOp, ": w must be (Co, C, 1, 1), got ", w.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Co = w.size(0);
  check_like(w, kOp, "w", x, {Co, C, 1, 1});
  check_like(b, kOp, "b", x, {Co});
  if (gate.numel()) check_like(gate, kOp, "gate", x, {N, Co, H, W});
  if (res.numel()) check_like(res, kOp, "residual", x, {N, Co, H, W});
  return Co;
}

// Rows per output-channel block of the forward: all Co for large images; for images with fewer pixel tiles than 4
// per thread (VAN's 14x14 and 7x7 stages: one tile of 196 / 49 pixels) the rows are split too, so that every
// thread works and packs only its rows of W; in whole micro-kernels of kMR rows (Co 256 in 8 blocks of 32 rows
// ran each as 14 + 14 + 4, the 4-row call at a third of the FMA rate).
int64_t channel_block_rows(int64_t pixel_tasks, int64_t Co) {
  const int64_t want = 4 * at::get_num_threads();
  int64_t ncb = 1;
  while (pixel_tasks * ncb < want && Co / (2 * ncb) >= 2 * kMR) ncb *= 2;
  const int64_t cb = (Co + ncb - 1) / ncb;
  return ncb == 1 ? Co : (cb + kMR - 1) / kMR * kMR;
}

template <typename T, bool Gelu, bool Gate, bool Res>
void fwd_impl(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gate, const Tensor& res, Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Co = w.size(0);
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P, npix = N * nt;
  const int64_t cb = channel_block_rows(npix, Co), ncb = (Co + cb - 1) / cb;
  const T *xp = x.data_ptr<T>(), *wp = w.data_ptr<T>(), *bp = b.data_ptr<T>();
  const T* gp = Gate ? gate.data_ptr<T>() : nullptr;
  const T* rp = Res ? res.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  constexpr int64_t NR = 2 * (32 / sizeof(T));
  const bool stream = stream_output(int64_t(sizeof(T)) * out.numel());  // cpu_stream.h
  // tasks: channel block outer, so that a thread's consecutive tasks share their packed rows of W
  // The gate and the residual of the task's rows are packed into panels like x (their epilogue loads then come
  // from L1, not from one cache line in each of M image rows HW apart per panel: in MOLRCM's gate_out, which reads
  // v that way, packing made the forward 1.5x faster).
  at::parallel_for(0, ncb * npix, 1, [&](int64_t t0, int64_t t1) {
    const int64_t pn = ((P + NR - 1) / NR) * NR;
    std::vector<T> panel(pn * C), gpanel(Gate ? pn * cb : 0), rpanel(Res ? pn * cb : 0), wk;
    int64_t packed_block = -1, packed_pix = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk = t / npix, pt = t % npix, o0 = blk * cb, o1 = std::min(Co, o0 + cb), M = o1 - o0;
      if (M <= 0) continue;
      const int64_t n = pt / nt, p0 = (pt % nt) * P, np = std::min(P, HW - p0);
      if (blk != packed_block) {
        wk = pack_a(wp + o0 * C, M, C, C, 1);
        packed_block = blk;
      }
      if (pt != packed_pix) {
        pack_b<T>(C, np, xp + n * C * HW + p0, HW, panel.data());
        packed_pix = pt;
      }
      if constexpr (Gate) pack_b<T>(M, np, gp + (n * Co + o0) * HW + p0, HW, gpanel.data());
      if constexpr (Res) pack_b<T>(M, np, rp + (n * Co + o0) * HW + p0, HW, rpanel.data());
      // the epilogue of panel pq: row m of the task's rows (one 64-byte part or two halves) gets the bias, GELU,
      // gate, residual and is stored
      auto epilogue = [&](int64_t pq) {
        const int64_t p = p0 + pq * NR, cnt = std::min(NR, np - pq * NR);
        return [&, pq, p, cnt](int64_t m, auto... c) {
          const int64_t o = o0 + m;
          const T bias = bp[o];
          const int64_t at = (n * Co + o) * HW + p, pm = (pq * M + m) * NR;  // pm: row m of panel pq
          store_row_as(op + at, cnt, stream, [&](auto r, int64_t off) {
            r = r + bias;
            if constexpr (Gelu) r = v_gelu(r);
            if constexpr (Gate) r = r * load_vec<decltype(r)>(gpanel.data() + pm + off);
            if constexpr (Res) r = r + load_vec<decltype(r)>(rpanel.data() + pm + off);
            return r;
          }, c...);
        };
      };
      for (int64_t pq = 0; pq * NR < np; ++pq) {
        if constexpr (kTwoPanels) {  // pairs of panels: one broadcast of W feeds two FMAs (as gate_out)
          if ((pq + 1) * NR < np) {
            auto st0 = epilogue(pq), st1 = epilogue(pq + 1);
            rows_panel2<T, ALay::KMajor>(0, M, C, wk.data(), M, panel.data() + pq * NR * C,
                                         panel.data() + (pq + 1) * NR * C, st0, st1);
            ++pq;
            continue;
          }
        }
        auto st = epilogue(pq);
        panel_rows<T>(0, M, C, wk.data(), M, panel.data() + pq * NR * C, st);
      }
    }
    stream_fence();
  });
}

template <typename T>
void bwd_impl(const Tensor& go, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gate, bool gelu,
              Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgate) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), Co = w.size(0);
  const int64_t P = pixel_tile(HW, N), nt = (HW + P - 1) / P, ntask = N * nt;
  const bool has_gate = gate.numel() > 0, need_z = gelu || has_gate;
  const T *xp = x.data_ptr<T>(), *wp = w.data_ptr<T>(), *bp = b.data_ptr<T>(), *gop = go.data_ptr<T>();
  const T* gp = has_gate ? gate.data_ptr<T>() : nullptr;
  T *dxp = dx.data_ptr<T>(), *dgp = has_gate ? dgate.data_ptr<T>() : nullptr;
  const int64_t LW = Co * C;
  std::vector<T> wpart(ntask * LW);
  std::vector<double> bpart(ntask * Co, 0.0);
  const std::vector<T> w_k = pack_a(wp, Co, C, C, 1), wT_k = pack_a(wp, C, Co, 1, C);
  at::parallel_for(0, ntask, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> dz(need_z ? Co * P : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nt, p0 = (t % nt) * P, np = std::min(P, HW - p0);
      const T* xt = xp + n * C * HW + p0;
      const T* got = gop + n * Co * HW + p0;
      // dz = grad_out * gate * act'(z), z = W x + b (recomputed); dgate = grad_out * act(z)
      const T* dzt = got;
      int64_t ldz = HW;
      if (need_z) {
        gemm_apix<T>(Co, np, C, w_k.data(), xt, HW, dz.data(), P, false);
        for (int64_t o = 0; o < Co; ++o) {
          T* zr = dz.data() + o * P;
          const T* g = got + o * HW;
          const T* gt = has_gate ? gp + (n * Co + o) * HW + p0 : nullptr;
          T* dgt = has_gate ? dgp + (n * Co + o) * HW + p0 : nullptr;
          const T bias = bp[o];
#pragma omp simd
          for (int64_t i = 0; i < np; ++i) {
            const T z = zr[i] + bias;
            const T a = gelu ? v_gelu(z) : z;
            const T d = gelu ? g[i] * v_gelu_grad(z) : g[i];
            if (has_gate) dgt[i] = g[i] * a;
            zr[i] = has_gate ? d * gt[i] : d;
          }
        }
        dzt = dz.data();
        ldz = P;
      }
      gemm_nt<T>(Co, C, np, dzt, ldz, xt, HW, wpart.data() + t * LW, C);
      row_sums<T>(dzt, Co, np, ldz, bpart.data() + t * Co);
      gemm_apix<T>(C, np, Co, wT_k.data(), dzt, ldz, dxp + n * C * HW + p0, HW, false);
    }
  });
  sum_rows<double>(wpart.data(), ntask, LW, LW, wpart.data());  // in place: row 0 holds the sums
  std::copy(wpart.data(), wpart.data() + LW, dw.data_ptr<T>());
  std::vector<T> bs(Co);
  sum_rows<double>(bpart.data(), ntask, Co, Co, bs.data());
  std::copy(bs.begin(), bs.end(), db.data_ptr<T>());
}

// Forward: x (N, C, H, W), w (Co, C, 1, 1), b (Co), gate / residual (N, Co, H, W) or empty, act -> (N, Co, H, W).
Tensor conv1x1_forward(const Tensor& x_, const Tensor& w_, const Tensor& b_, const Tensor& gate_, const Tensor& res_,
                       int64_t act) {
  const int64_t Co = check_inputs(x_, w_, b_, gate_, res_, act);
  Tensor x = x_.contiguous(), w = w_.contiguous(), b = b_.contiguous();
  Tensor gate = gate_.numel() ? gate_.contiguous() : gate_, res = res_.numel() ? res_.contiguous() : res_;
  Tensor out = pooled_empty({x.size(0), Co, x.size(2), x.size(3)}, x.options());
  const bool g = gate.numel() > 0, r = res.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv1x1_forward", [&] {
    using T = scalar_t;
    auto run = [&](auto gelu, auto has_g, auto has_r) {
      fwd_impl<T, decltype(gelu)::value, decltype(has_g)::value, decltype(has_r)::value>(x, w, b, gate, res, out);
    };
    const std::true_type y;
    const std::false_type n;
    if (act == kActGelu) {
      if (g) r ? run(y, y, y) : run(y, y, n);
      else r ? run(y, n, y) : run(y, n, n);
    } else {
      if (g) r ? run(n, y, y) : run(n, y, n);
      else r ? run(n, n, y) : run(n, n, n);
    }
  });
  return out;
}

// Backward: grad_out (N, Co, H, W) + the forward's inputs -> (grad_x, grad_w, grad_b, grad_gate, grad_residual);
// the gradients of an absent gate / residual are empty tensors.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> conv1x1_backward(const Tensor& go_, const Tensor& x_,
                                                                    const Tensor& w_, const Tensor& b_,
                                                                    const Tensor& gate_, const Tensor& res_,
                                                                    int64_t act) {
  const int64_t Co = check_inputs(x_, w_, b_, gate_, res_, act);
  const int64_t N = x_.size(0), H = x_.size(2), W = x_.size(3);
  check_like(go_, kOp, "grad_out", x_, {N, Co, H, W});
  Tensor go = go_.contiguous(), x = x_.contiguous(), w = w_.contiguous(), b = b_.contiguous();
  Tensor gate = gate_.numel() ? gate_.contiguous() : gate_;
  Tensor dx = pooled_empty_like(x), dw = at::empty_like(w), db = at::empty_like(b);
  Tensor dgate = gate.numel() ? pooled_empty_like(gate) : at::empty_like(gate_);
  Tensor dres = res_.numel() ? go.clone() : at::empty_like(res_);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv1x1_backward", [&] {
    bwd_impl<scalar_t>(go, x, w, b, gate, act == kActGelu, dx, dw, db, dgate);
  });
  return {dx, dw, db, dgate, dres};
}

}  // namespace
}  // namespace conv1x1
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// This level's kernels of the conv1x1 ops (cpu_register.h; cpu_dispatch.cpp registers one level's).
void register_conv1x1(torch::Library& m) {
  m.impl("conv1x1_forward", &conv1x1::conv1x1_forward);
  m.impl("conv1x1_backward", &conv1x1::conv1x1_backward);
}
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
