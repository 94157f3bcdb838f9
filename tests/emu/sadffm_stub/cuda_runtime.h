// Stand-in for <cuda_runtime.h> when tests/test_cuda_sadffm_emu.py compiles csrc/cuda/sadffm_{gated,dffm}_kernels.cu with g++.
#pragma once
#include "sadffm_emu.h"
