// Stand-in for <cuda_runtime.h> when tests/test_cuda_sadffm_emu.py compiles csrc/cuda/sadffm_kernels.cu with g++.
#pragma once
#include "sadffm_emu.h"
