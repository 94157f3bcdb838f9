// Dynamic shared memory above the default 48 KiB, for the MOLRCM and SADFFM kernels. Include it after the CUDA
// runtime declarations (<cuda_runtime.h>, or tests/emu/cuda_emu.h in the CPU emulation of the kernels).
#pragma once
#include <cstddef>

namespace eimn::cuda {

// Lets `kernel` launch with `bytes` of dynamic shared memory: nothing to do up to 48 KiB, the opt-in attribute
// above it; cudaErrorInvalidConfiguration when bytes exceeds the device's opt-in limit.
template <typename Kernel> inline cudaError_t prepare_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0, max_optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return e;
  if (bytes > static_cast<size_t>(max_optin)) return cudaErrorInvalidConfiguration;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace eimn::cuda
