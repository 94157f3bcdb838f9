"""The weights of one folded EIMN block (and the LayerNorm after it) laid out for the NHWC block kernels.

1x1 weights transposed to [C_in, C_out] (a K-major GEMM operand) in the activation dtype; biases, depthwise
weights (tap-major [K*K, padded channels], zero on padding channels), LayerNorm and DFFM gate weights float32.
Packed once per (dtype, device) by eimn_kernels.nhwc.NHWCEIMNBlock.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .block_config import check_fp32_dot
from .molrcm_config import pow2_block

__all__ = ["Packed", "pack_block", "unsupported"]


@dataclass
class Packed:
    """Packed block weights (see module doc); c = dim, bc its power-of-two padding, hid SADFFM's hidden width,
    rr DFFM's reduced width (br padded), c1/c2 MOLRCM's split (c1p, c2p, c3p padded), k*/d* kernel sizes and
    dilations."""
    c: int
    bc: int
    k0: int
    wq_t: torch.Tensor
    bq: torch.Tensor
    w0: torch.Tensor
    b0: torch.Tensor
    c1: int
    c2: int
    c1p: int
    c2p: int
    c3p: int
    k1: int
    d1: int
    k2: int
    d2: int
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    wf_t: torch.Tensor
    bf: torch.Tensor
    wv_t: torch.Tensor
    bv: torch.Tensor
    wo_t: torch.Tensor
    bo: torch.Tensor
    hid: int
    win_t: torch.Tensor
    b_in: torch.Tensor
    w_dw: torch.Tensor
    b_dw: torch.Tensor
    wout_t: torch.Tensor
    b_out: torch.Tensor
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    eps: float
    rr: int
    br: int
    wlr_t: torch.Tensor
    b_lr: torch.Tensor
    w_sl: torch.Tensor
    w_gr: torch.Tensor
    b_gr: torch.Tensor
    w_ce: torch.Tensor
    b_ce: torch.Tensor
    w_sg: torch.Tensor
    b_se: torch.Tensor
    ls2: torch.Tensor
    fp32_dot: str = "tf32x3"  # float32 GEMMs: 'tf32x3' or 'tf32' (block_common.dot_config)


def _conv(m: nn.Module) -> tuple[int, int]:
    """(kernel size, dilation) of a square depthwise nn.Conv2d."""
    return m.weight.shape[-1], m.dilation[0]


def unsupported(attn: nn.Module, mlp: nn.Module) -> str | None:
    """Why the block kernels cannot run this MOLRCM / SADFFM pair, or None: they take a region conv of
    dilation 1, odd square depthwise kernels and SADFFM's 3x3 depthwise."""
    k0, d0 = _conv(attn.region)
    if d0 != 1 or k0 % 2 == 0:
        return f"region conv {k0}x{k0} dilation {d0} (needs an odd size, dilation 1)"
    for m in (attn.spatial_1, attn.spatial_2):
        if m.weight.shape[-1] % 2 == 0 or m.weight.shape[0] == 0:
            return f"spatial conv of shape {tuple(m.weight.shape)} (needs odd kernels and channels)"
    if tuple(mlp.SAL.weight.shape[-2:]) != (3, 3):
        return f"SADFFM depthwise {tuple(mlp.SAL.weight.shape[-2:])} (needs 3x3)"
    return None


def _taps(w: torch.Tensor, width: int) -> torch.Tensor:
    """Depthwise weight (Cg, 1, K, K) -> float32 [K*K, width], tap-major, zero-padded channels."""
    cg, k = w.shape[0], w.shape[-1]
    out = torch.zeros(k * k, width, device=w.device, dtype=torch.float32)
    out[:, :cg] = w.detach().float().reshape(cg, k * k).t()
    return out


def _pad(v: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros(width, device=v.device, dtype=torch.float32)
    out[:v.numel()] = v.detach().float().reshape(-1)
    return out


@torch.no_grad()
def pack_block(attn: nn.Module, mlp: nn.Module, layer_scale_2: torch.Tensor, dtype: torch.dtype,
               device: torch.device, fp32_dot: str = "tf32x3") -> Packed:
    """Pack a folded block's MOLRCM ``attn`` and SADFFM ``mlp`` (eimn.model or fused modules, official names)
    and its ``layer_scale_2`` for activations of ``dtype`` on ``device``; ``fp32_dot``: the float32 GEMMs' precision
    ('tf32x3' or 'tf32')."""
    check_fp32_dot(fp32_dot)
    why = unsupported(attn, mlp)
    if why is not None:
        raise ValueError(f"NHWC block kernels: unsupported layer: {why}")

    def t1x1(conv: nn.Conv2d) -> torch.Tensor:
        w = conv.weight.detach()
        return w.reshape(w.shape[0], w.shape[1]).t().contiguous().to(device=device, dtype=dtype)

    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=device, dtype=torch.float32).reshape(-1).contiguous()

    c = attn.region.weight.shape[0]
    c1, c3 = attn.spatial_1.weight.shape[0], attn.spatial_2.weight.shape[0]
    c2 = c - c1 - c3
    bc = pow2_block(c)
    c1p, c2p, c3p = pow2_block(c1), pow2_block(c2), pow2_block(c3)
    (k0, _), (k1, d1), (k2, d2) = _conv(attn.region), _conv(attn.spatial_1), _conv(attn.spatial_2)
    d = mlp.DFFM
    rr = d.global_reduce.weight.shape[0]
    hid = mlp.linear_out.weight.shape[1]
    w_se = f32(d.spatial_expand.weight)
    mv = lambda t: t.to(device)  # noqa: E731
    return Packed(
        c=c, bc=bc, k0=k0, wq_t=t1x1(attn.proj_query[0]), bq=f32(attn.proj_query[0].bias),
        w0=mv(_taps(attn.region.weight, bc)), b0=mv(_pad(attn.region.bias, bc)),
        c1=c1, c2=c2, c1p=c1p, c2p=c2p, c3p=c3p, k1=k1, d1=d1, k2=k2, d2=d2,
        w1=mv(_taps(attn.spatial_1.weight, c1p)), b1=mv(_pad(attn.spatial_1.bias, c1p)),
        w2=mv(_taps(attn.spatial_2.weight, c3p)), b2=mv(_pad(attn.spatial_2.bias, c3p)),
        wf_t=t1x1(attn.fusion), bf=f32(attn.fusion.bias), wv_t=t1x1(attn.proj_value[0]),
        bv=f32(attn.proj_value[0].bias), wo_t=t1x1(attn.out), bo=f32(attn.out.bias),
        hid=hid, win_t=t1x1(mlp.linear_in), b_in=f32(mlp.linear_in.bias),
        w_dw=mv(_taps(mlp.SAL.weight, 2 * hid)), b_dw=f32(mlp.SAL.bias),
        wout_t=t1x1(mlp.linear_out), b_out=f32(mlp.linear_out.bias),
        ln_w=f32(d.norm.weight), ln_b=f32(d.norm.bias), eps=float(getattr(d.norm, "eps", 1e-6)),
        rr=rr, br=pow2_block(rr), wlr_t=t1x1(d.local_reduce), b_lr=f32(d.local_reduce.bias),
        w_sl=w_se[:rr].contiguous(), w_gr=f32(d.global_reduce.weight), b_gr=f32(d.global_reduce.bias),
        w_ce=f32(d.channel_expand.weight), b_ce=f32(d.channel_expand.bias), w_sg=w_se[rr:].contiguous(),
        b_se=f32(d.spatial_expand.bias), ls2=f32(layer_scale_2), fp32_dot=fp32_dot)
