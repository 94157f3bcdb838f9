// The registration entry of each CPU kernel translation unit, per ISA level (cpu_isa.h): register_<group>(m) adds the
// level's kernels of the group's ops to the CPU dispatch key. cpu_dispatch.cpp calls one level's entries when the
// library loads.
#pragma once
#include <torch/library.h>

#include <string>
#include <vector>

// The kernel translation units: molrcm_cpu.cpp, sadffm_cpu.cpp, conv1x1_cpu.cpp, channel_norm_cpu.cpp, conv3x3_cpu.cpp.
#define EIMN_CPU_OP_GROUPS(X) X(molrcm) X(sadffm) X(conv1x1) X(channel_norm) X(conv3x3)
#define EIMN_DECLARE_REGISTER(group) void register_##group(torch::Library& m);

namespace eimn::cpu {
// The CPU kernels' level (cpu_dispatch.cpp): [level in use ("" for none), why none, levels built (comma-separated),
// "1" when EIMN_CPU_ISA chose, else "0"].
std::vector<std::string> cpu_isa();
}  // namespace eimn::cpu
