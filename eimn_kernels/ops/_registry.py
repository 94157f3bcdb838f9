"""Table-driven registration of eimn_kernels custom ops.

Each fused op ``NAME`` becomes two ``torch.library`` ops in the ``eimn_kernels``
namespace:

* ``eimn_kernels::NAME(<inputs>, str backend) -> <outputs>``
* ``eimn_kernels::NAME_backward(<grads of outputs>, <inputs>, str backend) -> <grads of tensor inputs>``

with fake (meta) impls so torch.compile traces them, and an autograd formula
linking the two. The real work is done by the callables of the backend's op table
(``OPS[NAME]``, an :class:`~eimn_kernels.backends.table.OpKernels`; see
:mod:`eimn_kernels.backends`), chosen by the ``backend`` string.

An op whose spec has a ``stash`` may keep forward intermediates for its backward:
``NAME(<inputs>, bool keep, str backend) -> (<outputs>, Tensor stash)`` and
``NAME_backward(<grads>, <tensor inputs>, Tensor stash, <scalars>, str backend)``.
With ``keep`` (a gradient will be needed) a backend whose entry has ``forward_stash`` fills the stash and its
``backward_stash`` reads it; without ``keep`` the entry's ``infer`` runs where it has one, else ``forward``;
wherever no stash is kept it is an empty tensor and the plain ``backward`` runs.

``SPECS`` holds every registered spec by name (the routing-consistency test compares it with the backends' tables
and the C++ registrations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..backends import op_kernels
from ..backends.table import OpKernels

LIB = torch.library.Library("eimn_kernels", "DEF")


@dataclass(frozen=True)
class OpSpec:
    name: str
    tensor_inputs: tuple[str, ...]          # names of tensor inputs, in order
    scalar_inputs: tuple[tuple[str, str], ...]  # (name, schema type) after the tensors
    outputs: tuple[str, ...]                # names of tensor outputs
    fake: Callable                          # fake(*tensors, *scalars) -> output tensor(s)
    stash: Callable | None = None           # stash(*tensors, *scalars) -> empty stash tensor of a stashing backend


def kernels(backend: str, name: str) -> OpKernels:
    """The backend's table entry for op ``name``; a clear error where it has none."""
    k = op_kernels(backend, name)
    if k is None:
        raise NotImplementedError(f"eimn_kernels::{name} has no {backend!r} kernel (see eimn_kernels/backends/"
                                  f"{backend}.py, OPS)")
    return k


def _stashes(spec: OpSpec, backend: str) -> bool:
    """Whether ``backend`` keeps a stash for op ``spec`` (its table entry has forward_stash)."""
    if spec.stash is None:
        return False
    k = op_kernels(backend, spec.name)
    return k is not None and k.forward_stash is not None


def _as_tuple(out) -> tuple:
    """A tensor or a sequence of tensors as a tuple."""
    return (out,) if torch.is_tensor(out) else tuple(out)


def _schema_out(n: int) -> str:
    return "Tensor" if n == 1 else "(" + ", ".join(["Tensor"] * n) + ")"


SPECS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> tuple[object, object]:
    """Define NAME and NAME_backward for ``spec``; returns (forward op, backward op) overloads."""
    SPECS[spec.name] = spec
    stash = spec.stash is not None
    tin = [f"Tensor {n}" for n in spec.tensor_inputs]
    sin = [f"{t} {n}" for n, t in spec.scalar_inputs]
    grads = [f"Tensor grad_{n}" for n in spec.outputs]
    keep = ["bool keep"] if stash else []
    LIB.define(f"{spec.name}({', '.join(tin + sin + keep)}, str backend) -> "
               f"{_schema_out(len(spec.outputs) + stash)}")
    LIB.define(f"{spec.name}_backward({', '.join(grads + tin + (['Tensor stash'] if stash else []) + sin)}, "
               f"str backend) -> {_schema_out(len(spec.tensor_inputs))}")
    n_out, n_in, n_scalar = len(spec.outputs), len(spec.tensor_inputs), len(spec.scalar_inputs)

    def forward_impl(*args):
        backend = args[-1]
        k = kernels(backend, spec.name)
        if not stash:
            return k.forward(*args[:-1])
        a, keep_ = args[:-2], args[-2]
        if keep_ and k.forward_stash is not None:
            return tuple(k.forward_stash(*a))
        fwd = k.infer if (not keep_ and k.infer is not None) else k.forward
        if fwd is None:
            raise NotImplementedError(f"eimn_kernels::{spec.name} on {backend!r} always keeps its stash when a "
                                      "gradient is needed (call it with keep=True)")
        outs = _as_tuple(fwd(*a))
        return (*outs, outs[0].new_empty(0))

    def backward_impl(*args):
        *a, backend = args
        k = kernels(backend, spec.name)
        if not stash:
            return tuple(k.backward(*a))
        st = a[n_out + n_in]
        if st.numel() and k.backward_stash is not None:
            return tuple(k.backward_stash(*a))
        if k.backward is None:
            raise NotImplementedError(f"eimn_kernels::{spec.name} on {backend!r} computes its backward from the "
                                      "forward's stash only (the forward ran with keep=False)")
        return tuple(k.backward(*a[:n_out + n_in], *a[n_out + n_in + 1:]))

    LIB.impl(spec.name, forward_impl, "CompositeExplicitAutograd")
    LIB.impl(f"{spec.name}_backward", backward_impl, "CompositeExplicitAutograd")

    def fake_forward(*args):
        backend = args[-1]
        if not stash:
            return spec.fake(*args[:-1])
        a, keep_ = args[:-2], args[-2]
        outs = _as_tuple(spec.fake(*a))
        st = spec.stash(*a) if keep_ and _stashes(spec, backend) else outs[0].new_empty(0)
        return (*outs, st)

    def fake_backward(*args):
        inputs = args[n_out:n_out + n_in]
        return tuple(torch.empty_like(t) for t in inputs)

    torch.library.register_fake(f"eimn_kernels::{spec.name}", fake_forward, lib=LIB)
    torch.library.register_fake(f"eimn_kernels::{spec.name}_backward", fake_backward, lib=LIB)

    fwd = getattr(torch.ops.eimn_kernels, spec.name).default
    bwd = getattr(torch.ops.eimn_kernels, f"{spec.name}_backward").default

    def setup_context(ctx, inputs, output):
        saved = list(inputs[:n_in])
        if stash:
            ctx.mark_non_differentiable(output[-1])
            # No zero-filled gradient of the stash (tens of MB) for the backward: missing output gradients stay
            # None and backward() makes zeros only for real outputs.
            ctx.set_materialize_grads(False)
            saved.append(output[-1])
        ctx.save_for_backward(*saved)
        ctx.scalars = tuple(inputs[n_in:n_in + n_scalar])
        ctx.backend = inputs[-1]

    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        grad_outputs = grad_outputs[:n_out]  # not the stash's
        if any(g is None for g in grad_outputs):
            outs = _fake_like_outputs(saved[:n_in], ctx, spec)
            grad_outputs = [torch.zeros_like(o) if g is None else g for g, o in zip(grad_outputs, outs)]
        gouts = [g.contiguous() for g in grad_outputs]
        grads = bwd(*gouts, *saved, *ctx.scalars, ctx.backend)
        return (*grads, *([None] * (n_scalar + stash + 1)))

    _register_autograd(fwd, spec.name, backward, setup_context)
    return fwd, bwd


def _register_autograd(op, name: str, backward: Callable, setup_context: Callable) -> None:
    """The op's Autograd kernel: what ``torch.library.register_autograd(op, backward, setup_context=...)`` registers
    (an autograd.Function around the redispatch below autograd; plain redispatch when no gradient is needed), less
    its per-call ``fill_defaults`` of the inputs, which walks the schema once per argument (~0.1 ms per call for
    the 20-argument whole-layer ops). Our schemas have no default values, so the inputs are passed as they come."""
    schema = op._schema
    if any(a.has_default_value() for a in schema.arguments) or any(a.kwarg_only for a in schema.arguments):
        raise AssertionError(f"{schema}: _register_autograd passes the inputs as they come (no defaults, no kwargs)")
    below = torch._C._after_autograd_keyset

    def forward(ctx, keyset, *args):
        with torch._C._AutoDispatchBelowAutograd():
            out = op.redispatch(keyset & below, *args)
        setup_context(ctx, args, out)
        return out

    def backward_(ctx, *grads):
        return (None, *backward(ctx, *grads))

    # grad_fn: eimn_kernels_<name>_Backward
    Fn = type(f"eimn_kernels_{name}_", (torch.autograd.Function,),
              {"forward": staticmethod(forward), "backward": staticmethod(backward_)})

    def autograd_kernel(keyset, *args):
        if torch._C.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Fn.apply(keyset, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below, *args)

    LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)


def _fake_like_outputs(saved, ctx, spec: OpSpec):
    """Shapes of the forward outputs (for replacing None grads), from the fake impl."""
    return _as_tuple(spec.fake(*saved, *ctx.scalars))
