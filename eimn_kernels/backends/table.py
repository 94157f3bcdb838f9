"""The row type of the backends' op tables: what one backend runs for one fused op.

Every kernel backend module (``cpu``, ``cuda``, ``triton``) has ``OPS: dict[str, OpKernels]``, keyed by the op
name of the ``eimn_kernels`` custom op (``torch.ops.eimn_kernels.<name>``); an op a backend does not implement is
absent from its table. The custom op's implementation (``eimn_kernels/ops/_registry.py``) picks the callable:

* ``forward(*inputs) -> outputs`` and ``backward(*grads_of_outputs, *inputs) -> grads_of_tensor_inputs``: the plain
  pair (inputs: the op's tensors, then its scalars, as in ``csrc/eimn_ops.cpp``);
* ``forward_stash(*inputs) -> (*outputs, stash)`` and ``backward_stash(*grads, *tensor_inputs, stash, *scalars)``:
  the training pair, whose forward keeps intermediates for its backward in one opaque 1-d tensor; used when a
  gradient will be needed;
* ``infer(*inputs) -> outputs``: a forward-only kernel, used instead of ``forward`` when no gradient is needed.

A callable that is absent is ``None``; an entry has at least one forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["OpKernels"]


@dataclass(frozen=True)
class OpKernels:
    """One op's callables in one backend (see the module docstring); ``None`` where the backend has none."""
    forward: Optional[Callable] = None
    backward: Optional[Callable] = None
    forward_stash: Optional[Callable] = None
    backward_stash: Optional[Callable] = None
    infer: Optional[Callable] = None

    def __post_init__(self):
        if self.forward is None and self.forward_stash is None and self.infer is None:
            raise ValueError("an OpKernels entry needs at least one forward")
        if (self.forward_stash is None) != (self.backward_stash is None):
            raise ValueError("forward_stash and backward_stash come together")
