// Stand-in for <cuda_bf16.h> in the CPU emulation: a float-backed __nv_bfloat16 (only float32/float64 are tested).
#pragma once
struct __nv_bfloat16 { float v; };
inline float __bfloat162float(__nv_bfloat16 h) { return h.v; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{f}; }
