// Input checks shared by the CPU ops. Every message starts with the op's prefix `op` (e.g. "sadffm cpu").
#pragma once
#include "cpu/cpu_isa.h"
#include <ATen/ATen.h>

#include "cpu/cpu_gemm_bf16.h"

namespace eimn::cpu {
inline namespace EIMN_ISA {

// An NCHW image of the CPU kernels: 4-d, on the CPU, float32 or float64, no empty dimension.
inline void check_image(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-d (N, C, H, W), got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(), "): N, C, H and W must be >= 1");
}

// A tensor that goes with the input ref: ref's device and dtype, exactly the given shape.
inline void check_like(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", the input on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              ", the input has ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// The bfloat16 GEMM path (precision="bf16"): float32 tensors on a CPU with the engine of cpu_gemm_bf16.h.
inline void check_bf16(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": bf16 GEMMs take float32 tensors, got ", x.scalar_type());
  TORCH_CHECK(bf16::available(), op, ": bf16 GEMMs need a CPU with AVX512-BF16 (Cooper Lake, Sapphire Rapids or "
              "later, Zen 4); this one has none: use precision=\"fp32\"");
}

}  // namespace EIMN_ISA
}  // namespace eimn::cpu
