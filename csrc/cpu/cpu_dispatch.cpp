// Which ISA level of the CPU kernels runs (cpu_isa.h), chosen once when the library loads: the environment variable
// EIMN_CPU_ISA (avx2 | avx512 | amx) if set, else the best level this CPU runs among those built. Registers that
// level's kernels for the CPU dispatch key (cpu_register.h), and reports the choice (cpu_isa(): eimn_C::cpu_isa).
// Compiled once, for the baseline x86-64 (no level flags): it runs on every CPU, including one below the lowest level,
// where it registers no kernels and says why (eimn_kernels reports the cpu backend unavailable).
//
// Multi-level builds (setup.py's default on x86-64: -DEIMN_MULTI_ISA) hold avx2 (x86-64-v3: AVX2, FMA, BMI1/2, F16C,
// LZCNT, MOVBE) and avx512 (x86-64-v4: AVX512F/BW/CD/DQ/VL); single-level builds (EIMN_NATIVE=1: -march=native for
// the build machine; benchmarks.ab_builds; other architectures) hold "native".
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/cpu_register.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace eimn::cpu {
#if defined(EIMN_MULTI_ISA)
inline namespace avx2 { EIMN_CPU_OP_GROUPS(EIMN_DECLARE_REGISTER) }
inline namespace avx512 { EIMN_CPU_OP_GROUPS(EIMN_DECLARE_REGISTER) }
#else
inline namespace native { EIMN_CPU_OP_GROUPS(EIMN_DECLARE_REGISTER) }
#endif

namespace {

// The levels' CPU features, from CPUID and the register state the OS saves (XCR0).
struct CpuLevels {
  bool avx2 = false, avx512 = false, amx = false;
};

CpuLevels cpu_levels() {
  CpuLevels l;
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return l;
  const bool fma = (c >> 12) & 1, movbe = (c >> 22) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1,
             f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return l;
  unsigned xlo, xhi;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return l;
  const bool bmi1 = (b >> 3) & 1, avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1, f = (b >> 16) & 1, dq = (b >> 17) & 1,
             cd = (b >> 28) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  unsigned ea, eb, ec, ed;
  const bool lzcnt = __get_cpuid(0x80000001, &ea, &eb, &ec, &ed) && ((ec >> 5) & 1);
  l.avx2 = (xlo & 0x6) == 0x6 && avx2 && fma && bmi1 && bmi2 && f16c && lzcnt && movbe;
  l.avx512 = l.avx2 && (xlo & 0xe6) == 0xe6 && f && dq && cd && bw && vl;
  l.amx = l.avx512 && amx_bf16 && amx_tile && ((xlo >> 17) & 3) == 3;
#endif
  return l;
}

// The level in use (empty when none), why none runs, the levels built, and whether EIMN_CPU_ISA chose.
struct IsaChoice {
  std::string level, error, built;
  bool forced = false;
};

IsaChoice choose_level() {
  IsaChoice ch;
  const char* env = std::getenv("EIMN_CPU_ISA");
  const std::string want = env ? env : "";
  ch.forced = !want.empty();
#if defined(EIMN_MULTI_ISA)
  ch.built = "avx2,avx512";
  const CpuLevels cpu = cpu_levels();
  const std::string has = cpu.avx512 ? "avx2, avx512" : cpu.avx2 ? "avx2" : "none";
  if (want.empty()) {
    if (cpu.avx512) ch.level = "avx512";
    else if (cpu.avx2) ch.level = "avx2";
    else ch.error = "this CPU lacks AVX2+FMA (x86-64-v3), the lowest level of the CPU kernels";
  } else if (want == "avx2" || want == "avx512") {
    if ((want == "avx2" && cpu.avx2) || (want == "avx512" && cpu.avx512)) ch.level = want;
    else ch.error = "EIMN_CPU_ISA=" + want + ": this CPU lacks " +
                    (want == "avx2" ? "AVX2+FMA (x86-64-v3)" : "AVX-512 (x86-64-v4: AVX512F/BW/CD/DQ/VL)") +
                    "; levels it runs: " + has;
  } else if (want == "amx") {
    ch.error = cpu.amx ? "EIMN_CPU_ISA=amx: this build has no AMX kernels (levels: avx2, avx512)"
                       : "EIMN_CPU_ISA=amx: this CPU (or its OS) has no AMX (AMX-TILE and AMX-BF16 with the tile "
                         "state enabled); levels it runs: " + has;
  } else {
    ch.error = "EIMN_CPU_ISA=" + want + ": unknown level (avx2, avx512 or amx)";
  }
#else
  ch.built = "native";
  if (want.empty() || want == "native") ch.level = "native";
  else ch.error = "EIMN_CPU_ISA=" + want + ": this is a single-level build (native: compiled for the build " +
                  "machine, EIMN_NATIVE=1); build without EIMN_NATIVE for the avx2 / avx512 levels";
#endif
  return ch;
}

const IsaChoice& isa_choice() {
  static const IsaChoice ch = choose_level();
  return ch;
}

}  // namespace

std::vector<std::string> cpu_isa() {
  const IsaChoice& ch = isa_choice();
  return {ch.level, ch.error, ch.built, ch.forced ? "1" : "0"};
}
}  // namespace eimn::cpu

TORCH_LIBRARY_IMPL(eimn_C, CPU, m) {
  const std::string& level = eimn::cpu::isa_choice().level;
#define EIMN_CALL_REGISTER(group) register_##group(m);
#define EIMN_REGISTER_LEVEL(lv)               \
  if (level == #lv) {                         \
    using namespace eimn::cpu::lv;            \
    EIMN_CPU_OP_GROUPS(EIMN_CALL_REGISTER)    \
  }
#if defined(EIMN_MULTI_ISA)
  EIMN_REGISTER_LEVEL(avx2)
  EIMN_REGISTER_LEVEL(avx512)
#else
  EIMN_REGISTER_LEVEL(native)
#endif
#undef EIMN_REGISTER_LEVEL
#undef EIMN_CALL_REGISTER
}
