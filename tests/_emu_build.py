"""Builds a CPU emulation harness of CUDA kernels (tests/emu/*.cpp) into a shared library and loads it.

``EIMN_EMU_ASAN=1`` adds AddressSanitizer and UBSan (python must then run with
LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0)."""
import ctypes
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
EMU = REPO / "tests" / "emu"


def build_emu(source: pathlib.Path, out: pathlib.Path, opt: str = "-O1", includes=()) -> ctypes.CDLL:
    """g++ ``source`` (with csrc/, csrc/common/, tests/emu/ and ``includes`` on the include path) -> ``out``, loaded."""
    flags = [opt, "-g"]
    if os.environ.get("EIMN_EMU_ASAN") == "1":
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    inc = [a for d in (*includes, EMU, REPO / "csrc", REPO / "csrc" / "common") for a in ("-I", str(d))]
    subprocess.run(["g++", "-std=c++17", *flags, "-fPIC", "-shared", "-pthread", *inc, str(source), "-o", str(out)],
                   check=True)
    return ctypes.CDLL(str(out))
