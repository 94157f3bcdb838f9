"""nn.Modules running the fused ops, with the parameters and state_dict keys of EIMN's layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from ._ext import cpu_kernels_loaded
from .cpu_bf16 import runs_bf16
from .ops import channel_layer_norm, dw_mix, gate_out, proj_qv, sadffm_layer

__all__ = ["MOLRCM", "SADFFM", "ChannelLayerNorm", "apply_channel_norm"]


def _params(m: nn.Module, paths: tuple[tuple[str, ...], ...]) -> list[torch.Tensor]:
    """The parameters at ``paths`` (submodule names, then the parameter's name) below ``m``, read from the modules'
    ``_modules`` / ``_parameters`` dicts: the same tensors as attribute access (also where torch.func swaps them
    in), without nn.Module.__getattr__'s cost (~2 us a level; 15-16 parameters per fused layer call)."""
    out = []
    for path in paths:
        mod = m
        for name in path[:-1]:
            mod = mod._modules[name]
        out.append(mod._parameters[path[-1]])
    return out


def _autocast_on(dev: str) -> bool:
    """Whether autocast is on for device type ``dev`` (False for types autocast does not know, e.g. 'meta')."""
    return torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)


def _autocast_args(owner: nn.Module, x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under autocast, run the fused layer in the autocast dtype (as autocast runs convolutions): cast the input
    and the parameters to it. Otherwise return them unchanged.

    Without a gradient to the parameters (inference), their casts are kept on ``owner`` and reused while the
    parameters are the same tensors at the same version (an in-place update, ``load_state_dict`` or a move makes
    new casts): per call only x is cast. A layer otherwise pays one cast per parameter per call (15-16 kernel
    launches from Python), which dominated fused half-precision inference at small sizes on a GPU. With a
    gradient needed the casts are made per call, as autocast does, so that they are part of the graph."""
    dev = x.device.type
    if not _autocast_on(dev):
        return (x, *params)
    dt = torch.get_autocast_dtype(dev)
    grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    if grad or torch.compiler.is_compiling():
        return tuple(t.to(dt) for t in (x, *params))
    key = (dt, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
    cache = owner.__dict__.get("_autocast_cache")
    if cache is None or cache[0] != key:
        cache = (key, tuple(p.detach().to(dt) for p in params))
        owner.__dict__["_autocast_cache"] = cache
    return (x.to(dt), *cache[1])


def cpu_inference_input(x: torch.Tensor) -> bool:
    """Whether x can go to a C++ CPU inference kernel as it is: a non-empty float32/64 (N, C, H, W) CPU tensor, the
    C++ kernels loaded, grad mode off, no autocast, not under torch.compile."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and x.numel() > 0 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and cpu_kernels_loaded())


def _runs_cpu_inference_kernel(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether a fused layer's one-call CPU inference kernel (MOLRCM with a residual, SADFFM with the block tail)
    runs for x: :func:`cpu_inference_input`, C the layer's width (``layer.dim``), backend auto or cpu."""
    return cpu_inference_input(x) and x.shape[1] == layer.dim and layer.backend in ("auto", "cpu")


def _forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A fused layer's forward: ``layer._run(x, *params)`` with the parameters at ``layer._PARAMS``; under autocast
    with x and the parameters in the autocast dtype and autocast off inside (the fused ops take one dtype)."""
    params = _params(layer, layer._PARAMS)
    dev = x.device.type
    if not _autocast_on(dev):
        return layer._run(x, *params)
    args = _autocast_args(layer, x, *params)
    with torch.autocast(dev, enabled=False):
        return layer._run(*args)


class _Norm(nn.Module):
    """Holder of a channel LayerNorm's weight and bias (keys ``weight``, ``bias``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class _DFFMParams(nn.Module):
    """Holder of DFFM's parameters under the official names (norm, global_reduce, ...)."""

    def __init__(self, dim: int, act_ratio: float = 0.25):
        super().__init__()
        reduce = int(dim * act_ratio)
        self.norm = _Norm(dim)
        self.global_reduce = nn.Conv2d(dim, reduce, 1)
        self.local_reduce = nn.Conv2d(dim, reduce, 1)
        self.channel_expand = nn.Conv2d(reduce, dim, 1)
        self.spatial_expand = nn.Conv2d(2 * reduce, 1, 1)


class MOLRCM(nn.Module):
    """Fused MOLRCM. x: (N, dim, H, W) -> (N, dim, H, W); state_dict keys as eimn.model.MOLRCM.

    ``split`` = (c1, c2, c3), default (3/8, 1/8, 4/8 of dim); ``dilations`` of region,
    spatial_1, spatial_2 default (1, 2, 3).
    """

    def __init__(self, dim: int, backend: str = "auto", split: tuple[int, int, int] | None = None,
                 kernel_sizes: tuple[int, int, int] = (5, 5, 7), dilations: tuple[int, int, int] = (1, 2, 3)):
        super().__init__()
        if split is None:
            split = (int(3 / 8 * dim), int(1 / 8 * dim), int(4 / 8 * dim))
        c1, c2, c3 = split
        if c1 + c2 + c3 != dim:
            raise ValueError(f"MOLRCM split {split} does not sum to dim={dim}")
        self.dim, self.split, self.dilations, self.backend = dim, tuple(split), tuple(dilations), backend
        k0, k1, k2 = kernel_sizes
        d0, d1, d2 = dilations
        self.proj_value = nn.Sequential(nn.Conv2d(dim, dim, 1))
        self.proj_query = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU())
        self.region = nn.Conv2d(dim, dim, k0, padding=d0 * (k0 - 1) // 2, dilation=d0, groups=dim)
        self.spatial_1 = nn.Conv2d(c1, c1, k1, padding=d1 * (k1 - 1) // 2, dilation=d1, groups=max(c1, 1))
        self.spatial_2 = nn.Conv2d(c3, c3, k2, padding=d2 * (k2 - 1) // 2, dilation=d2, groups=max(c3, 1))
        self.fusion = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    @classmethod
    def from_module(cls, m: nn.Module, backend: str = "auto") -> "MOLRCM":
        """Fused module sharing the parameters (same Parameter objects) of an original MOLRCM ``m``."""
        dim = m.region.weight.shape[0]
        c1, c3 = m.spatial_1.weight.shape[0], m.spatial_2.weight.shape[0]
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.dim, new.split, new.backend = dim, (c1, dim - c1 - c3, c3), backend
        new.dilations = (m.region.dilation[0], m.spatial_1.dilation[0], m.spatial_2.dilation[0])
        for name in ("proj_value", "proj_query", "region", "spatial_1", "spatial_2", "fusion", "out"):
            setattr(new, name, getattr(m, name))
        return new.train(m.training)

    _PARAMS = (("proj_query", "0", "weight"), ("proj_query", "0", "bias"), ("proj_value", "0", "weight"),
               ("proj_value", "0", "bias"), ("region", "weight"), ("region", "bias"), ("spatial_1", "weight"),
               ("spatial_1", "bias"), ("spatial_2", "weight"), ("spatial_2", "bias"), ("fusion", "weight"),
               ("fusion", "bias"), ("out", "weight"), ("out", "bias"))

    cpu_bf16 = False  # set by optimize_for_inference(precision="bf16") (eimn_kernels.cpu_bf16)

    def runs_residual(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x, residual=r)`` runs as one C++ call that adds r in the last GEMM's epilogue (the EIMN
        block's x + attn(x) without a pass of its own): :func:`_runs_cpu_inference_kernel`."""
        return _runs_cpu_inference_kernel(self, x)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, dim, H, W) -> (N, dim, H, W); with ``residual`` (the output's shape): the output + residual,
        added in the kernel where :meth:`runs_residual` says so."""
        bf16 = runs_bf16(self, x)
        if bf16 or (residual is not None and self.runs_residual(x)):
            c1, c2, _ = self.split
            return torch.ops.eimn_C.molrcm_infer_forward(x, *_params(self, self._PARAMS), c1, c2, *self.dilations,
                                                         bf16, residual)
        out = _forward(self, x)
        return out if residual is None else out + residual

    def _run(self, x, wq, bq, wv, bv, w0, b0, w1, b1, w2, b2, wf, bf, wo, bo):
        c1, c2, _ = self.split
        q, v = proj_qv(x, wq, bq, wv, bv, backend=self.backend)
        y = dw_mix(q, w0, b0, w1, b1, w2, b2, c1, c2, *self.dilations, backend=self.backend)
        return gate_out(y, v, wf, bf, wo, bo, backend=self.backend)

    def extra_repr(self) -> str:
        bf = ", cpu_bf16=True" if self.cpu_bf16 else ""
        return f"dim={self.dim}, split={self.split}, dilations={self.dilations}, backend={self.backend!r}{bf}"


class SADFFM(nn.Module):
    """Fused SADFFM. x: (N, dim, H, W) -> (N, dim, H, W); state_dict keys as eimn.model.SADFFM."""

    def __init__(self, dim: int, expand_ratio: float = 2.66, backend: str = "auto", kernel_size: int = 3):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.dim, self.hidden, self.backend = dim, hidden, backend
        self.linear_in = nn.Conv2d(dim, hidden * 2, 1)
        self.SAL = nn.Conv2d(hidden * 2, hidden * 2, kernel_size, padding=kernel_size // 2, groups=hidden * 2)
        self.linear_out = nn.Conv2d(hidden, dim, 1)
        self.DFFM = _DFFMParams(dim)

    @classmethod
    def from_module(cls, m: nn.Module, backend: str = "auto") -> "SADFFM":
        """Fused module sharing the parameters of an original SADFFM ``m``."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.dim, new.hidden, new.backend = m.linear_out.weight.shape[0], m.linear_out.weight.shape[1], backend
        for name in ("linear_in", "SAL", "linear_out", "DFFM"):
            setattr(new, name, getattr(m, name))
        return new.train(m.training)

    _PARAMS = (("linear_in", "weight"), ("linear_in", "bias"), ("SAL", "weight"), ("SAL", "bias"),
               ("linear_out", "weight"), ("linear_out", "bias"), ("DFFM", "norm", "weight"),
               ("DFFM", "norm", "bias"), ("DFFM", "global_reduce", "weight"), ("DFFM", "global_reduce", "bias"),
               ("DFFM", "local_reduce", "weight"), ("DFFM", "local_reduce", "bias"),
               ("DFFM", "channel_expand", "weight"), ("DFFM", "channel_expand", "bias"),
               ("DFFM", "spatial_expand", "weight"), ("DFFM", "spatial_expand", "bias"))

    cpu_bf16 = False  # set by optimize_for_inference(precision="bf16") (eimn_kernels.cpu_bf16)

    def runs_block_tail(self, x: torch.Tensor, norm: nn.Module | None = None) -> bool:
        """Whether ``forward(x, tail=(ls, norm))`` runs: the EIMN block's tail in the CPU kernel's gate pass, where
        :func:`_runs_cpu_inference_kernel` and ``norm`` is None or a LayerNorm over the channels (ChannelLayerNorm or
        nn.LayerNorm(C) with weight and bias)."""
        if not _runs_cpu_inference_kernel(self, x):
            return False
        if norm is None:
            return True
        shape = getattr(norm, "normalized_shape", (getattr(norm, "dim", None),))
        return (isinstance(norm, (ChannelLayerNorm, nn.LayerNorm)) and tuple(shape) == (self.dim,)
                and norm.weight is not None and norm.bias is not None and norm.weight.dtype == x.dtype)

    def forward(self, x: torch.Tensor, tail: tuple[torch.Tensor, nn.Module | None] | None = None) -> torch.Tensor:
        """x: (N, dim, H, W) -> (N, dim, H, W). ``tail`` = (ls (dim,), norm) (eimn_kernels.inference's folded
        block, where :meth:`runs_block_tail` says so): returns norm(x + ls * SADFFM(x)) from one kernel, the
        residual, layer scale and LayerNorm applied in its gate pass (norm None: no LayerNorm)."""
        bf16 = bool(self.cpu_bf16 and runs_bf16(self, x))
        if tail is None and not bf16:
            return _forward(self, x)
        ls, norm = tail if tail is not None else (None, None)
        nw, nb, ne = (None, None, 1e-5) if norm is None else (norm.weight, norm.bias, float(norm.eps))
        return torch.ops.eimn_C.sadffm_infer_forward(x, *_params(self, self._PARAMS),
                                                     getattr(self.DFFM.norm, "eps", 1e-6), bf16, ls, nw, nb, ne)

    def _run(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return sadffm_layer(x, *params, getattr(self.DFFM.norm, "eps", 1e-6), backend=self.backend)

    def extra_repr(self) -> str:
        bf = ", cpu_bf16=True" if self.cpu_bf16 else ""
        return f"dim={self.dim}, hidden={self.hidden}, backend={self.backend!r}{bf}"


def apply_channel_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """EIMN's LayerNorm between blocks on an NCHW x, as eimn.model.EIMN applies it: ``norm`` (ChannelLayerNorm or
    any module with ``channels_first``) on x directly, nn.LayerNorm(C) through NHWC permutes; None: x itself."""
    if norm is None:
        return x
    if getattr(norm, "channels_first", False):
        return norm(x)
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW image, fused. x: (N, dim, H, W) -> (N, dim, H, W) contiguous.

    Parameters and state_dict keys (``weight``, ``bias``) of ``nn.LayerNorm(dim)``; applied to NCHW directly
    (``channels_first``), where the original model permutes to NHWC, normalises and permutes back.
    """

    channels_first = True  # eimn.model.EIMN calls it on NCHW without the permutes

    def __init__(self, dim: int, eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        self.dim, self.eps, self.backend = dim, eps, backend
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    @classmethod
    def from_module(cls, m: nn.LayerNorm, backend: str = "auto") -> "ChannelLayerNorm":
        """Fused module sharing the parameters of ``m``, an ``nn.LayerNorm(dim)`` with an elementwise affine."""
        if len(m.normalized_shape) != 1 or m.weight is None or m.bias is None:
            raise ValueError(f"ChannelLayerNorm.from_module needs nn.LayerNorm(dim) with weight and bias, got {m}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.dim, new.eps, new.backend = m.normalized_shape[0], m.eps, backend
        new.weight, new.bias = m.weight, m.bias
        return new.train(m.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._parameters["weight"], self._parameters["bias"]
        dev = x.device.type
        if not _autocast_on(dev):
            return channel_layer_norm(x, w, b, self.eps, backend=self.backend)
        # As autocast runs layer_norm: CUDA casts it to float32 (float32 out: EIMN's residual stream stays
        # float32); CPU autocast leaves it in the input's dtype.
        if dev == "cuda":
            x = x.float()
        w, b = w.to(x.dtype), b.to(x.dtype)
        with torch.autocast(dev, enabled=False):
            return channel_layer_norm(x, w, b, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}, backend={self.backend!r}"
