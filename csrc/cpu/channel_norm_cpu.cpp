// CPU (C++/OpenMP via at::parallel_for) kernels of the channel LayerNorm of an NCHW image, float32 / float64:
//   channel_layer_norm_forward / _backward : y[n, c, p] = (x[n, c, p] - mu[n, p]) * rstd[n, p] * w[c] + b[c],
//   mu, rstd over the C channels of each pixel (EIMN's LayerNorm between blocks, nn.LayerNorm(C) applied to the
//   channels of NCHW without the permute and the copies around it).
// Semantics: eimn_kernels/reference.py channel_layer_norm. Work is split into tiles of kTile pixels of one image;
// each tile's C x kTile block is read from L2 for the statistics and once more for the output, so the image is read
// from memory once and written once. Weight gradients: per-tile partials summed in tile order (fixed order, not
// dependent on the number of threads).
#include "cpu/cpu_isa.h"
#include "cpu/cpu_register.h"
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/channel_norm.h"
#include "cpu/cpu_checks.h"
#include "cpu/cpu_pool.h"
#include "cpu/cpu_reduce.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {
namespace channel_norm {
namespace {

constexpr int64_t kTile = 256;  // pixels per tile (C = 64: a 64 KB block of the image)

constexpr const char* kOp = "channel_layer_norm cpu";  // the prefix of this file's error messages

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  check_image(x, kOp, "x");
  check_like(w, kOp, "weight", x, {x.size(1)});
  check_like(b, kOp, "bias", x, {x.size(1)});
}

// y = LayerNorm over channels; mean / rstd (N x HW each) written when not null (the stash for the backward).
template <typename T>
void cln_fwd_kernel(const T* x, const T* w, const T* b, T* y, int64_t N, int C, int64_t HW, T eps, T* mean,
                    T* rstd) {
  const int64_t nt = (HW + kTile - 1) / kTile;
  at::parallel_for(0, N * nt, 1, [&](int64_t i0, int64_t i1) {
    alignas(64) T mu[kTile], rs[kTile];
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kTile, P = std::min(kTile, HW - p0);
      const T* xt = x + n * C * HW + p0;
      T* yt = y + n * C * HW + p0;
      channel_stats(xt, HW, C, P, eps, mu, rs);
      channel_norm_apply(xt, HW, C, P, mu, rs, w, b, yt, HW);
      if (mean) {
        std::copy(mu, mu + P, mean + n * HW + p0);
        std::copy(rs, rs + P, rstd + n * HW + p0);
      }
    }
  });
}

// gx = rstd * (g - mean_c g - xhat * mean_c(g * xhat)), g = gy * w, xhat = (x - mu) * rstd; per-tile partials of
// gw = sum gy * xhat and gb = sum gy into part[tile][2C]. mean / rstd: the forward's stash, or null (recomputed).
template <typename T>
void cln_bwd_kernel(const T* gy, const T* x, const T* w, T* gx, T* part, int64_t N, int C, int64_t HW, T eps,
                    const T* mean, const T* rstd) {
  const int64_t nt = (HW + kTile - 1) / kTile;
  const T invC = T(1) / T(C);
  at::parallel_for(0, N * nt, 1, [&](int64_t i0, int64_t i1) {
    alignas(64) T mu[kTile], rs[kTile], ma[kTile], mb[kTile];
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t n = it / nt, p0 = (it % nt) * kTile, P = std::min(kTile, HW - p0);
      const int64_t off = n * C * HW + p0;
      if (mean) {
        std::copy(mean + n * HW + p0, mean + n * HW + p0 + P, mu);
        std::copy(rstd + n * HW + p0, rstd + n * HW + p0 + P, rs);
      } else {
        channel_stats(x + off, HW, C, P, eps, mu, rs);
      }
      T* pt = part + it * 2 * C;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) { ma[p] = 0; mb[p] = 0; }
      for (int c = 0; c < C; ++c) {
        const T* xc = x + off + c * HW;
        const T* gc = gy + off + c * HW;
        const T wc = w[c];
        T sw = 0, sb = 0;
#pragma omp simd reduction(+ : sw, sb)
        for (int64_t p = 0; p < P; ++p) {
          const T xh = (xc[p] - mu[p]) * rs[p];
          sw += gc[p] * xh;
          sb += gc[p];
          const T g = gc[p] * wc;
          ma[p] += g;
          mb[p] += g * xh;
        }
        pt[c] = sw;
        pt[C + c] = sb;
      }
      for (int c = 0; c < C; ++c) {
        const T* xc = x + off + c * HW;
        const T* gc = gy + off + c * HW;
        T* oc = gx + off + c * HW;
        const T wc = w[c];
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          const T xh = (xc[p] - mu[p]) * rs[p];
          oc[p] = rs[p] * (gc[p] * wc - ma[p] * invC - xh * mb[p] * invC);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> cln_forward(const at::Tensor& x_, const at::Tensor& w_, const at::Tensor& b_,
                                               double eps, bool keep) {
  check_inputs(x_, w_, b_);
  auto x = x_.contiguous(), w = w_.contiguous(), b = b_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto y = pooled_empty_like(x);
  auto stash = at::empty({keep ? 2 * N * HW : 0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_layer_norm_forward", [&] {
    using T = scalar_t;
    T* st = keep ? stash.data_ptr<T>() : nullptr;
    cln_fwd_kernel<T>(x.data_ptr<T>(), w.data_ptr<T>(), b.data_ptr<T>(), y.data_ptr<T>(), N, int(C), HW, T(eps), st,
                      keep ? st + N * HW : nullptr);
  });
  return {y, stash};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cln_backward(const at::Tensor& gy_, const at::Tensor& x_,
                                                            const at::Tensor& w_, const at::Tensor& b_,
                                                            const at::Tensor* stash, double eps) {
  check_inputs(x_, w_, b_);
  check_like(gy_, kOp, "grad_y", x_, x_.sizes());
  auto x = x_.contiguous(), w = w_.contiguous(), gy = gy_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (stash)
    TORCH_CHECK(stash->dim() == 1 && stash->numel() == 2 * N * HW && stash->scalar_type() == x.scalar_type() &&
                    stash->is_contiguous(),
                kOp, ": the stash must be the forward's (", 2 * N * HW, " elements of ",
                x.scalar_type(), "), got ", stash->sizes(), " ", stash->scalar_type());
  const int64_t tiles = N * ((HW + kTile - 1) / kTile);
  auto gx = pooled_empty_like(x);
  auto part = at::empty({tiles, 2 * C}, x.options());
  auto gwb = at::empty({2 * C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_layer_norm_backward", [&] {
    using T = scalar_t;
    const T* st = stash ? stash->data_ptr<T>() : nullptr;
    cln_bwd_kernel<T>(gy.data_ptr<T>(), x.data_ptr<T>(), w.data_ptr<T>(), gx.data_ptr<T>(), part.data_ptr<T>(), N,
                      int(C), HW, T(eps), st, st ? st + N * HW : nullptr);
    sum_rows<double>(part.data_ptr<T>(), tiles, 2 * C, 2 * C, gwb.data_ptr<T>());
  });
  return {gx, gwb.slice(0, 0, C).clone(), gwb.slice(0, C, 2 * C).clone()};
}

}  // namespace

// Forward: x (N, C, H, W), weight (C), bias (C) -> y (N, C, H, W).
at::Tensor channel_layer_norm_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  return std::get<0>(cln_forward(x, w, b, eps, false));
}

// Forward for training: (y, stash); the stash holds mean and rstd (N x H x W each) for the backward.
std::tuple<at::Tensor, at::Tensor> channel_layer_norm_forward_stash(const at::Tensor& x, const at::Tensor& w,
                                                                   const at::Tensor& b, double eps) {
  return cln_forward(x, w, b, eps, true);
}

// Backward: grad_y + forward inputs (statistics recomputed) -> (grad_x, grad_weight, grad_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_layer_norm_backward(const at::Tensor& gy, const at::Tensor& x,
                                                                           const at::Tensor& w, const at::Tensor& b,
                                                                           double eps) {
  return cln_backward(gy, x, w, b, nullptr, eps);
}

// Backward with the forward's stash (mean, rstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_layer_norm_backward_stash(const at::Tensor& gy,
                                                                                 const at::Tensor& x,
                                                                                 const at::Tensor& w,
                                                                                 const at::Tensor& b,
                                                                                 const at::Tensor& stash, double eps) {
  return cln_backward(gy, x, w, b, &stash, eps);
}

}  // namespace channel_norm
}  // namespace EIMN_ISA
}  // namespace eimn::cpu

namespace eimn::cpu {
inline namespace EIMN_ISA {
// This level's kernels of the channel_norm ops (cpu_register.h; cpu_dispatch.cpp registers one level's).
void register_channel_norm(torch::Library& m) {
  m.impl("channel_layer_norm_forward", &channel_norm::channel_layer_norm_forward);
  m.impl("channel_layer_norm_forward_stash", &channel_norm::channel_layer_norm_forward_stash);
  m.impl("channel_layer_norm_backward", &channel_norm::channel_layer_norm_backward);
  m.impl("channel_layer_norm_backward_stash", &channel_norm::channel_layer_norm_backward_stash);
}
}  // namespace EIMN_ISA
}  // namespace eimn::cpu
