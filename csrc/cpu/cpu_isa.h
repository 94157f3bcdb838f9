// ISA levels of the CPU kernels. setup.py compiles every kernel translation unit (csrc/cpu/*_cpu.cpp) once per level
// (x86-64: avx2 = x86-64-v3, avx512 = x86-64-v4) with -DEIMN_ISA=<level>, and
// cpu_dispatch.cpp registers the level that the CPU runs best (or EIMN_CPU_ISA names) when the library loads, as
// PyTorch's CPU_CAPABILITY dispatch does. Each level's code lives in the inline namespace eimn::cpu::EIMN_ISA: the
// same inline functions and templates compiled for two levels never merge at link time (they would: identical
// names, different instructions and, in cpu_gemm.h, different panel layouts). Code is written as if the namespace
// were eimn::cpu (the inline namespace is transparent to it). Not in a level namespace: cpu_pool.h (one buffer cache
// per process, no ISA-specific code).
// Without -DEIMN_ISA (single-level builds: -march=native development builds, benchmarks.ab_builds) the level is
// "native"; setup.py's base translation units (eimn_ops.cpp, cpu_dispatch.cpp) are compiled with EIMN_ISA=base.
#pragma once

#ifndef EIMN_ISA
#define EIMN_ISA native
#endif
#define EIMN_ISA_STR2(x) #x
#define EIMN_ISA_STR(x) EIMN_ISA_STR2(x)
