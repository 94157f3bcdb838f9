"""The backends' op tables, the registered ``torch.ops.eimn_kernels`` ops and the C++ registrations agree.

* every table entry names a registered fused op, and a stash pair only where the op has a stash;
* every ``torch.ops.eimn_C`` callable in the cpu and cuda tables has the argument and result counts its slot
  (forward, backward, forward_stash, backward_stash, infer) calls it with;
* the eimn_C ops the cpu table uses are exactly those ``csrc/cpu/*.cpp`` registers for CPU (and the dispatcher
  has a CPU kernel for each), the cuda table's exactly those ``csrc/cuda/*_cuda.cpp`` registers for CUDA, and
  every schema of ``csrc/eimn_ops.cpp`` is used by a table or is a utility op;
* every Triton entry resolves to a function of ``eimn_kernels/triton_kernels`` with the right parameter count.
"""
from __future__ import annotations

import inspect
import pathlib
import re

import pytest
import torch

import eimn_kernels as ek  # noqa: F401  (registers the ops)
from eimn_kernels import _ext
from eimn_kernels.backends import cpu, cuda, triton
from eimn_kernels.backends.table import OpKernels
from eimn_kernels.ops._registry import SPECS

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
UTILITY_OPS = {"built_with_cuda", "cpu_pool_stats", "cpu_pool_clear", "cpu_bf16_engine", "cpu_isa"}
# inference-only ops with no autograd op of their own: the NHWC block (CUDA), VAN's conv MLP (CPU), the whole
# MOLRCM layer (CPU: the bfloat16 GEMM path, eimn_kernels.cpu_bf16) and the SR tail's conv + pixel shuffle (CPU:
# eimn_kernels.tail_conv)
INFERENCE_OPS = {"nhwc_block_forward": "CUDA", "convmlp_infer_forward": "CPU", "molrcm_infer_forward": "CPU",
                 "conv3x3_shuffle_forward": "CPU"}
SLOTS = ("forward", "backward", "forward_stash", "backward_stash", "infer")

needs_ext = pytest.mark.skipif(not _ext.extension_loaded(), reason="eimn_kernels._C is not built")


def _arity(spec, slot: str) -> tuple[int, int]:
    """(arguments, results) of the table callable in ``slot`` for op ``spec``."""
    n_in, n_s, n_out = len(spec.tensor_inputs), len(spec.scalar_inputs), len(spec.outputs)
    return {"forward": (n_in + n_s, n_out), "infer": (n_in + n_s, n_out),
            "backward": (n_out + n_in + n_s, n_in), "forward_stash": (n_in + n_s, n_out + 1),
            "backward_stash": (n_out + n_in + 1 + n_s, n_in)}[slot]


def _eimn_c_name(fn) -> str | None:
    """'NAME' for torch.ops.eimn_C.NAME, else None."""
    if isinstance(fn, torch._ops.OpOverloadPacket) and fn._qualified_op_name.startswith("eimn_C::"):
        return fn._qualified_op_name.split("::", 1)[1]
    return None


def _registered(paths, key: str) -> set[str]:
    """Op names of ``m.impl("NAME", ...)`` in the TORCH_LIBRARY_IMPL(eimn_C, key, m) blocks of ``paths`` (CPU: in the
    kernel files' register_<group>(torch::Library& m) functions, which csrc/cpu/cpu_dispatch.cpp calls per level)."""
    names = set()
    head = r"TORCH_LIBRARY_IMPL\(eimn_C,\s*" + key + r",\s*m\)" if key == "CUDA" else \
        r"void register_\w+\(torch::Library& m\)"
    for p in paths:
        text = p.read_text()
        for block in re.findall(head + r"\s*\{(.*?)\n\}", text, re.S):
            names |= set(re.findall(r'm\.impl\("(\w+)"', block))
    return names


def _tables():
    return {"cpu": cpu.OPS, "cuda": cuda.OPS, "triton": triton.OPS}


def test_table_entries_name_registered_ops():
    for backend, table in _tables().items():
        for name, k in table.items():
            assert isinstance(k, OpKernels), (backend, name)
            assert name in SPECS, f"{backend}.OPS[{name!r}] is no registered eimn_kernels op"
            if k.forward_stash is not None:
                assert SPECS[name].stash is not None, f"{backend}: {name} has a stash pair but its op no stash"
            if k.infer is not None:
                assert SPECS[name].stash is not None, f"{backend}: {name}'s infer needs the op's keep argument"
            for op in (name, f"{name}_backward"):
                assert hasattr(torch.ops.eimn_kernels, op), op


@needs_ext
def test_cpu_table_covers_every_op():
    assert set(cpu.OPS) == set(SPECS)


@needs_ext
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_eimn_c_callables_match_their_slots(backend):
    for name, k in _tables()[backend].items():
        for slot in SLOTS:
            fn = getattr(k, slot)
            c = _eimn_c_name(fn)
            if c is None:
                continue
            schema = fn.default._schema
            want_args, want_out = _arity(SPECS[name], slot)
            # trailing arguments with defaults (sadffm_infer_forward's bf16) are not passed by the tables
            n_args = sum(1 for a in schema.arguments if not a.has_default_value())
            assert n_args == want_args, f"{backend} {name}.{slot} -> {c}: {schema}"
            outs = schema.returns
            n_out = len(outs) if not (len(outs) == 1 and str(outs[0].type) == "List[Tensor]") else want_out
            assert n_out == want_out, f"{backend} {name}.{slot} -> {c}: {schema}"


@needs_ext
@pytest.mark.parametrize("backend,key,pattern", [("cpu", "CPU", "cpu/*.cpp"), ("cuda", "CUDA", "cuda/*_cuda.cpp")])
def test_tables_match_cpp_registrations(backend, key, pattern):
    used = {c for k in _tables()[backend].values() for c in map(_eimn_c_name, (getattr(k, s) for s in SLOTS)) if c}
    registered = _registered(sorted(CSRC.glob(pattern)), key) - set(INFERENCE_OPS)
    assert used == registered, f"table only: {used - registered}; C++ only: {registered - used}"
    if backend == "cpu":
        for c in used:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"eimn_C::{c}", "CPU"), c


def test_every_schema_is_used():
    schemas = set(re.findall(r'm\.def\("(\w+)\(', (CSRC / "eimn_ops.cpp").read_text()))
    cpu_impl = _registered(sorted(CSRC.glob("cpu/*.cpp")), "CPU")
    cuda_impl = _registered(sorted(CSRC.glob("cuda/*_cuda.cpp")), "CUDA")
    for name, key in INFERENCE_OPS.items():
        assert name in (cuda_impl if key == "CUDA" else cpu_impl) and name not in (cpu_impl if key == "CUDA"
                                                                                   else cuda_impl), name
    assert schemas - UTILITY_OPS == cpu_impl | cuda_impl
    for name in schemas - UTILITY_OPS - set(INFERENCE_OPS):
        op = name.rsplit("_forward", 1)[0].rsplit("_backward", 1)[0].removesuffix("_infer")
        assert op in SPECS, f"eimn_C::{name} belongs to no registered op"


def test_triton_entries_resolve():
    pytest.importorskip("triton")
    for name, k in triton.OPS.items():
        for slot in SLOTS:
            fn = getattr(k, slot)
            if fn is None:
                continue
            f = fn.resolve()
            assert f.__module__.startswith("eimn_kernels.triton_kernels."), (name, slot, f.__module__)
            params = inspect.signature(f).parameters.values()
            assert len([p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]) == _arity(SPECS[name], slot)[0], \
                (name, slot, f)
