// CPU emulation harness of csrc/cuda/molrcm_kernels.cu (see cuda_emu.h), driven by tests/test_cuda_molrcm_emu.py
// through ctypes. Inputs are copied into exactly-sized std::vectors so that an AddressSanitizer build reports
// any out-of-bounds global access; shared memory is an exactly-sized vector too. float32 (dtype 0) and
// float64 (dtype 1) only (half types need the CUDA headers).
#define EIMN_CUDA_EMU 1
#include "cuda/molrcm_kernels.cu"

#include <vector>

using eimn::DType;

namespace {
template <typename T> std::vector<T> copy_in(const void* p, int64_t n) {
  const T* t = static_cast<const T*>(p);
  return std::vector<T>(t, t + n);
}
template <typename T> void copy_out(const std::vector<T>& v, void* p) {
  if (!v.empty()) std::memcpy(p, v.data(), v.size() * sizeof(T));
}
template <typename T> const void* ptr(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }
template <typename T> void* ptr(std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }

eimn::cuda::molrcm::DwMixShape shape(const int64_t* dims, const int* ks) {
  eimn::cuda::molrcm::DwMixShape s;
  s.N = dims[0]; s.C = dims[1]; s.H = dims[2]; s.W = dims[3]; s.c1 = dims[4]; s.c2 = dims[5];
  s.K0 = ks[0]; s.K1 = ks[1]; s.K2 = ks[2]; s.d0 = ks[3]; s.d1 = ks[4]; s.d2 = ks[5];
  return s;
}

template <typename T>
int forward_t(const eimn::cuda::molrcm::DwMixShape& s, DType dt, const void* const* in, void* y, int* info) {
  const int64_t c3 = s.C - s.c1 - s.c2, img = s.N * s.C * s.H * s.W;
  auto q = copy_in<T>(in[0], img);
  auto w0 = copy_in<T>(in[1], s.C * s.K0 * s.K0), b0 = copy_in<T>(in[2], s.C);
  auto w1 = copy_in<T>(in[3], s.c1 * s.K1 * s.K1), b1 = copy_in<T>(in[4], s.c1);
  auto w2 = copy_in<T>(in[5], c3 * s.K2 * s.K2), b2 = copy_in<T>(in[6], c3);
  std::vector<T> out(static_cast<size_t>(img));
  const auto p = eimn::cuda::molrcm::dw_mix_plan(s, dt, false, 0);
  info[0] = p.tile_w; info[1] = p.tile_h; info[2] = static_cast<int>(p.smem_bytes);
  if (!p.ok) return -1;
  const int e = eimn::cuda::molrcm::dw_mix_forward(s, p, dt, ptr(q), ptr(w0), ptr(b0), ptr(w1), ptr(b1), ptr(w2), ptr(b2),
                                           ptr(out), nullptr);
  copy_out(out, y);
  return e;
}

template <typename T>
int backward_t(const eimn::cuda::molrcm::DwMixShape& s, DType dt, const void* const* in, void* const* out, int* info) {
  using A = eimn::acc_t<T>;
  const int64_t c3 = s.C - s.c1 - s.c2, img = s.N * s.C * s.H * s.W;
  auto gy = copy_in<T>(in[0], img), q = copy_in<T>(in[1], img);
  auto w0 = copy_in<T>(in[2], s.C * s.K0 * s.K0), b0 = copy_in<T>(in[3], s.C);
  auto w1 = copy_in<T>(in[4], s.c1 * s.K1 * s.K1), w2 = copy_in<T>(in[5], c3 * s.K2 * s.K2);
  std::vector<T> gq(img), gw0(s.C * s.K0 * s.K0), gb0(s.C), gw1(s.c1 * s.K1 * s.K1), gb1(s.c1),
      gw2(c3 * s.K2 * s.K2), gb2(c3);
  const auto p = eimn::cuda::molrcm::dw_mix_plan(s, dt, true, 0);
  info[0] = p.tile_w; info[1] = p.tile_h; info[2] = static_cast<int>(p.smem_bytes);
  if (!p.ok) return -1;
  // workspaces poisoned with NaN: a partial never written shows up in the result
  std::vector<A> ws0(s.C * p.partials * (s.K0 * s.K0 + 1), A(NAN)), ws1(s.c1 * p.partials * (s.K1 * s.K1 + 1), A(NAN)),
      ws2(c3 * p.partials * (s.K2 * s.K2 + 1), A(NAN));
  const int e = eimn::cuda::molrcm::dw_mix_backward(s, p, dt, ptr(gy), ptr(q), ptr(w0), ptr(b0), ptr(w1), ptr(w2), ptr(gq),
                                            ptr(gw0), ptr(gb0), ptr(gw1), ptr(gb1), ptr(gw2), ptr(gb2), ptr(ws0),
                                            ptr(ws1), ptr(ws2), nullptr);
  copy_out(gq, out[0]); copy_out(gw0, out[1]); copy_out(gb0, out[2]); copy_out(gw1, out[3]);
  copy_out(gb1, out[4]); copy_out(gw2, out[5]); copy_out(gb2, out[6]);
  return e;
}
}  // namespace

extern "C" {

// Opt-in shared memory limit the emulated device reports (forces smaller tiles when low).
void emu_set_smem_limit(int bytes) { emu::smem_limit = bytes; }

// dims: N, C, H, W, c1, c2; ks: K0, K1, K2, d0, d1, d2; in: q, w0, b0, w1, b1, w2, b2; info: tile_w, tile_h, smem.
int emu_dw_mix_forward(int dtype, const int64_t* dims, const int* ks, const void* const* in, void* y, int* info) {
  const auto s = shape(dims, ks);
  return dtype == 0 ? forward_t<float>(s, DType::kFloat32, in, y, info)
                    : forward_t<double>(s, DType::kFloat64, in, y, info);
}

// in: grad_y, q, w0, b0, w1, w2; out: gq, gw0, gb0, gw1, gb1, gw2, gb2.
int emu_dw_mix_backward(int dtype, const int64_t* dims, const int* ks, const void* const* in, void* const* out,
                        int* info) {
  const auto s = shape(dims, ks);
  return dtype == 0 ? backward_t<float>(s, DType::kFloat32, in, out, info)
                    : backward_t<double>(s, DType::kFloat64, in, out, info);
}

// Epilogues (no copies: exercised for their math, not their bounds).
int emu_proj_qv_epilogue_forward(int dtype, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* t,
                                 const void* bq, const void* bv, void* q, void* v) {
  return eimn::cuda::molrcm::proj_qv_epilogue_forward(static_cast<DType>(dtype), N, Cq, Cv, HW, t, bq, bv, q, v, nullptr);
}
int emu_proj_qv_epilogue_backward(int dtype, int64_t N, int64_t Cq, int64_t Cv, int64_t HW, const void* tq,
                                  const void* bq, const void* gq, const void* gv, void* G) {
  return eimn::cuda::molrcm::proj_qv_epilogue_backward(static_cast<DType>(dtype), N, Cq, Cv, HW, tq, bq, gq, gv, G, nullptr);
}
int emu_gate_out_epilogue_gate(int dtype, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                               const void* v, void* s) {
  return eimn::cuda::molrcm::gate_out_epilogue_gate(static_cast<DType>(dtype), N, C, HW, f, bf, v, s, nullptr);
}
int emu_bias_epilogue(int dtype, int64_t N, int64_t C, int64_t HW, const void* t, const void* b, void* out) {
  return eimn::cuda::molrcm::bias_epilogue(static_cast<DType>(dtype), N, C, HW, t, b, out, nullptr);
}
int emu_gate_out_epilogue_backward(int dtype, int64_t N, int64_t C, int64_t HW, const void* f, const void* bf,
                                   const void* v, const void* gs, void* s, void* gv, void* gf) {
  return eimn::cuda::molrcm::gate_out_epilogue_backward(static_cast<DType>(dtype), N, C, HW, f, bf, v, gs, s, gv, gf,
                                                nullptr);
}
}
