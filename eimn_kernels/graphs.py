"""CUDA graphs for inference: a model's whole forward captured once per input shape and replayed, so a call costs
one graph launch instead of one launch per kernel (at LR 320x180 the fused EIMN is launch- and host-bound).

``ek.optimize_for_inference(model, cuda_graphs=True)`` wraps the folded model in :class:`CUDAGraphed`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

__all__ = ["CUDAGraphed"]


class _Graph:
    """One captured forward: static input and output tensors and the graph that maps one to the other."""

    def __init__(self, model: nn.Module, x: torch.Tensor, pool):
        self.input = x.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up outside the capture (lazy init, autotuning, allocator)
            for _ in range(2):
                model(self.input)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = model(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output.clone()  # the static output is overwritten by the next replay


class CUDAGraphed(nn.Module):
    """Runs ``model`` through CUDA graphs: without autograd, for CUDA inputs, one graph per (shape, dtype, device,
    autocast state), the ``max_graphs`` most recently used kept (they share one memory pool). Anything else
    (CPU tensors, a gradient needed) calls ``model`` directly. Input: any tensor ``model`` takes; output: a fresh
    tensor, as ``model`` returns it. The model must not change its parameters while graphs are held
    (:meth:`reset` drops them)."""

    def __init__(self, model: nn.Module, max_graphs: int = 8):
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model, self.max_graphs = model, max_graphs
        self._graphs: OrderedDict = OrderedDict()
        self._pool = None

    def reset(self) -> None:
        """Drop every captured graph (and their memory)."""
        self._graphs.clear()
        self._pool = None

    def _key(self, x: torch.Tensor) -> tuple:
        dev = x.device.type
        return (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled(dev),
                torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None)

    def _capture(self, x: torch.Tensor):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return _Graph(self.model, x, self._pool)

    def _use_graphs(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cuda" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not torch.cuda.is_current_stream_capturing())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_graphs(x):
            return self.model(x)
        key = self._key(x)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(x)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return g(x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self._modules.get("model")
            if model is None:
                raise
            return getattr(model, name)  # the wrapped model's attributes (e.g. EIMN's scale)

    def extra_repr(self) -> str:
        return f"max_graphs={self.max_graphs}, graphs={len(self._graphs)}"
