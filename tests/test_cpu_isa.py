"""ISA levels of the CPU kernels (csrc/cpu/cpu_isa.h, cpu_dispatch.cpp): one build for every x86-64.

* the level picked from this CPU's features, the levels built, EIMN_CPU_ISA's clear errors;
* the CPU op tests at every level this machine runs besides the default one (the rest of the suite runs at the
  default level): in a subprocess with EIMN_CPU_ISA set, as a user would force it;
* a static proof that the avx2 level never reaches an AVX-512 instruction: from every function of the avx2 level
  and of the baseline objects, the direct calls of the extension's own code (objdump) reach no function that uses
  AVX-512 registers (zmm, xmm/ymm 16-31, opmasks), except the bfloat16 GEMM engine (cpu_gemm_bf16.h), which runs
  only where the CPU has AVX512-BF16.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

import eimn_kernels as ek

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = ek.cpu_isa_info()
multi = pytest.mark.skipif(INFO["built"] != ["avx2", "avx512"],
                           reason=f"not a multi-level build (levels built: {INFO['built']}; EIMN_NATIVE=1?)")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _levels_here() -> list[str]:
    fl = _cpu_flags()
    out = []
    if {"avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe"} <= fl:
        out.append("avx2")
        if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= fl:
            out.append("avx512")
    return out


def _import_with(level: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EIMN_CPU_ISA=level)
    return subprocess.run([sys.executable, "-c", "import eimn_kernels as ek; print(ek.cpu_isa())"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@multi
def test_default_level_is_the_best_this_cpu_runs():
    here = _levels_here()
    if not here:
        pytest.skip("cannot read this CPU's flags (/proc/cpuinfo)")
    assert INFO["level"] == here[-1] and not INFO["forced"] and not INFO["error"]
    assert ek.backend_status("cpu", "cpu") == (True, f"C++ kernels ({here[-1]})")


@multi
def test_forced_levels_and_clear_errors():
    for level in _levels_here():
        r = _import_with(level)
        assert r.returncode == 0 and r.stdout.strip() == level, r.stderr
    r = _import_with("sse2")
    assert r.returncode != 0 and "EIMN_CPU_ISA=sse2: unknown level (avx2, avx512 or amx)" in r.stderr
    r = _import_with("amx")  # no AMX kernels are built; this CPU may also lack AMX: both say so
    assert r.returncode != 0 and "EIMN_CPU_ISA=amx: this" in r.stderr and "Traceback" in r.stderr
    if "avx512" not in _levels_here():
        r = _import_with("avx512")
        assert r.returncode != 0 and "this CPU lacks AVX-512" in r.stderr


@multi
@pytest.mark.parametrize("level", [lv for lv in ("avx2", "avx512") if lv != INFO["level"]])
def test_cpu_op_tests_at_other_levels(level):
    if level not in _levels_here():
        pytest.skip(f"this CPU does not run the {level} level")
    files = ["tests/test_molrcm.py", "tests/test_sadffm.py", "tests/test_channel_norm.py", "tests/test_lka.py",
             "tests/test_cpu_bf16.py", "tests/test_tail_conv.py"]
    env = dict(os.environ, EIMN_CPU_ISA=level)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider",
                        *files, "-k", "cpu or bf16"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", r.stdout), r.stdout[-500:]


_AVX512_REG = re.compile(r"%(zmm\d+|[xy]mm(1[6-9]|2\d|3[01])|k[1-7])\b")
_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_CALL = re.compile(r"\b(call|jmp)\s+[0-9a-f]+ <([^>+]+)(\+0x[0-9a-f]+)?>")


@multi
def test_avx2_level_reaches_no_avx512_instruction():
    if not (shutil.which("objdump") and shutil.which("c++filt")):
        pytest.skip("objdump / c++filt not found")
    import eimn_kernels._C as ext
    dis = subprocess.run(f"objdump -d --no-show-raw-insn '{ext.__file__}' | c++filt", shell=True, check=True,
                         capture_output=True, text=True).stdout
    uses, calls, cur = {}, {}, None
    for line in dis.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = m.group(1)
            uses.setdefault(cur, False)
            calls.setdefault(cur, set())
            continue
        if cur is None:
            continue
        if _AVX512_REG.search(line):
            uses[cur] = True
        c = _CALL.search(line)
        if c and not c.group(2).endswith("@plt") and c.group(2) != cur:
            calls[cur].add(c.group(2))
    assert sum(uses.values()) > 100, "no AVX-512 code found at all: is the avx512 level built?"
    roots = [f for f in uses if "eimn::cpu::avx2::" in f or "eimn::cpu::base::" in f or "eimn::cpu::(anonymous" in f]
    assert len(roots) > 50
    seen, stack, bad = set(), [r for r in roots if "::bf16::" not in r], []
    while stack:
        f = stack.pop()
        if f in seen or "::bf16::" in f:  # the bfloat16 engine checks the CPU before it runs
            continue
        seen.add(f)
        if uses.get(f):
            bad.append(f)
        stack.extend(calls.get(f, ()))
    assert not bad, f"{len(bad)} functions reachable from the avx2 level use AVX-512: {sorted(bad)[:5]}"
