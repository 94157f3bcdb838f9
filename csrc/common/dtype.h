// Element type of the tensors that the torch-free CUDA launchers take (csrc/cuda/*.cuh): one tag for every op.
// The accumulation type is float64 for kFloat64 and float32 for the other three.
#pragma once

namespace eimn {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace eimn
