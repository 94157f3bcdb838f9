// Stand-in for <cuda_fp16.h> in the CPU emulation: a float-backed __half (only float32/float64 are tested).
#pragma once
struct __half { float v; };
inline float __half2float(__half h) { return h.v; }
inline __half __float2half_rn(float f) { return __half{f}; }
