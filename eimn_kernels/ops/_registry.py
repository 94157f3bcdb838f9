"""Table-driven registration of eimn_kernels custom ops.

Each fused op ``NAME`` becomes two ``torch.library`` ops in the ``eimn_kernels``
namespace:

* ``eimn_kernels::NAME(<inputs>, str backend) -> <outputs>``
* ``eimn_kernels::NAME_backward(<grads of outputs>, <inputs>, str backend) -> <grads of tensor inputs>``

with fake (meta) impls so torch.compile traces them, and an autograd formula
linking the two. The real work is done by the backend module chosen by the
``backend`` string (see :mod:`eimn_kernels.backends`), through its functions
``NAME_forward`` and ``NAME_backward``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..backends import get_impl

LIB = torch.library.Library("eimn_kernels", "DEF")


@dataclass(frozen=True)
class OpSpec:
    name: str
    tensor_inputs: tuple[str, ...]          # names of tensor inputs, in order
    scalar_inputs: tuple[tuple[str, str], ...]  # (name, schema type) after the tensors
    outputs: tuple[str, ...]                # names of tensor outputs
    fake: Callable                          # fake(*tensors, *scalars) -> output tensor(s)


def _schema_out(n: int) -> str:
    return "Tensor" if n == 1 else "(" + ", ".join(["Tensor"] * n) + ")"


def register(spec: OpSpec) -> tuple[object, object]:
    """Define NAME and NAME_backward for ``spec``; returns (forward op, backward op) overloads."""
    ins = [f"Tensor {n}" for n in spec.tensor_inputs] + [f"{t} {n}" for n, t in spec.scalar_inputs]
    grads = [f"Tensor grad_{n}" for n in spec.outputs]
    LIB.define(f"{spec.name}({', '.join(ins)}, str backend) -> {_schema_out(len(spec.outputs))}")
    LIB.define(f"{spec.name}_backward({', '.join(grads + ins)}, str backend) -> "
               f"{_schema_out(len(spec.tensor_inputs))}")
    n_out, n_in = len(spec.outputs), len(spec.tensor_inputs)

    def forward_impl(*args):
        *a, backend = args
        out = getattr(get_impl(backend), f"{spec.name}_forward")(*a)
        return out

    def backward_impl(*args):
        *a, backend = args
        return tuple(getattr(get_impl(backend), f"{spec.name}_backward")(*a))

    LIB.impl(spec.name, forward_impl, "CompositeExplicitAutograd")
    LIB.impl(f"{spec.name}_backward", backward_impl, "CompositeExplicitAutograd")

    def fake_forward(*args):
        *a, _backend = args
        return spec.fake(*a)

    def fake_backward(*args):
        inputs = args[n_out:n_out + n_in]
        return tuple(torch.empty_like(t) for t in inputs)

    torch.library.register_fake(f"eimn_kernels::{spec.name}", fake_forward, lib=LIB)
    torch.library.register_fake(f"eimn_kernels::{spec.name}_backward", fake_backward, lib=LIB)

    fwd = getattr(torch.ops.eimn_kernels, spec.name).default
    bwd = getattr(torch.ops.eimn_kernels, f"{spec.name}_backward").default
    n_scalar = len(spec.scalar_inputs)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_in])
        ctx.scalars = tuple(inputs[n_in:n_in + n_scalar])
        ctx.backend = inputs[-1]

    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        if any(g is None for g in grad_outputs):
            outs = _fake_like_outputs(saved, ctx, spec)
            grad_outputs = [torch.zeros_like(o) if g is None else g for g, o in zip(grad_outputs, outs)]
        gouts = [g.contiguous() for g in grad_outputs]
        grads = bwd(*gouts, *saved, *ctx.scalars, ctx.backend)
        return (*grads, *([None] * (n_scalar + 1)))

    torch.library.register_autograd(f"eimn_kernels::{spec.name}", backward,
                                    setup_context=setup_context, lib=LIB)
    return fwd, bwd


def _fake_like_outputs(saved, ctx, spec: OpSpec):
    """Shapes of the forward outputs (for replacing None grads), from the fake impl."""
    out = spec.fake(*saved, *ctx.scalars)
    return (out,) if torch.is_tensor(out) else tuple(out)
