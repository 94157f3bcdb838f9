"""Pure-PyTorch reference of every eimn_kernels op (eager composition, autograd by torch).

These define the semantics every backend must reproduce. All tensors NCHW;
1x1 weights have conv shape (Cout, Cin, 1, 1), depthwise weights (C, 1, K, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dw_mix", "proj_qv", "gate_out", "gated_dwconv", "dffm_out", "channel_layer_norm", "conv1x1", "molrcm",
           "sadffm"]


def _dw(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dilation: int) -> torch.Tensor:
    k = w.shape[-1]
    return F.conv2d(x, w, b, padding=dilation * (k - 1) // 2, dilation=dilation, groups=x.shape[1])


def dw_mix(q, w0, b0, w1, b1, w2, b2, c1: int, c2: int, d0: int = 1, d1: int = 2, d2: int = 3):
    """MOLRCM spatial mixing. q: (N, C, H, W) -> (N, C, H, W).

    r = DW_{K0,d0}(q); y = cat(DW_{K1,d1}(r[:, :c1]), r[:, c1:c1+c2], DW_{K2,d2}(r[:, c1+c2:])).
    Every depthwise conv is 'same' zero-padded (padding d*(K-1)/2) and pads r, not q.
    """
    r = _dw(q, w0, b0, d0)
    parts = []
    if c1 > 0:
        parts.append(_dw(r[:, :c1], w1, b1, d1))
    if c2 > 0:
        parts.append(r[:, c1:c1 + c2])
    if r.shape[1] - c1 - c2 > 0:
        parts.append(_dw(r[:, c1 + c2:], w2, b2, d2))
    return torch.cat(parts, dim=1)


def proj_qv(x, wq, bq, wv, bv):
    """MOLRCM input projections. x: (N, C, H, W) -> (q, v) = (GELU(Wq x + bq), Wv x + bv)."""
    return F.gelu(F.conv2d(x, wq, bq)), F.conv2d(x, wv, bv)


def gate_out(y, v, wf, bf, wo, bo):
    """MOLRCM gating. y, v: (N, C, H, W) -> Wo (SiLU(Wf y + bf) * v) + bo."""
    return F.conv2d(F.silu(F.conv2d(y, wf, bf)) * v, wo, bo)


def gated_dwconv(x, w_in, b_in, w_dw, b_dw):
    """SADFFM front. x: (N, C, H, W) -> h: (N, hid, H, W) with t = DW_K(W_in x + b_in),
    h = GELU(t[:, :hid]) * t[:, hid:], hid = w_in.shape[0] // 2."""
    t = _dw(F.conv2d(x, w_in, b_in), w_dw, b_dw, 1)
    x1, x2 = t.chunk(2, dim=1)
    return F.gelu(x1) * x2


def dffm_out(h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se, eps: float = 1e-6):
    """SADFFM back: y = W_out h + b_out, then the DFFM gate. h: (N, hid, H, W) -> (N, C, H, W).

    z = channel-LayerNorm(y; ln_w, ln_b, eps); g = GELU(W_gr mean_HW(z) + b_gr);
    l = GELU(W_lr z + b_lr); c = sigmoid(W_ce g + b_ce); s = sigmoid(W_se [l; g] + b_se);
    returns y * c * s.
    """
    y = F.conv2d(h, w_out, b_out)
    mu = y.mean(1, keepdim=True)
    var = (y - mu).pow(2).mean(1, keepdim=True)
    z = (y - mu) / torch.sqrt(var + eps) * ln_w[:, None, None] + ln_b[:, None, None]
    g = F.gelu(F.conv2d(z.mean(dim=(2, 3), keepdim=True), w_gr, b_gr))
    loc = F.gelu(F.conv2d(z, w_lr, b_lr))
    c = torch.sigmoid(F.conv2d(g, w_ce, b_ce))
    s = torch.sigmoid(F.conv2d(torch.cat([loc, g.expand(-1, -1, *loc.shape[2:])], 1), w_se, b_se))
    return y * c * s


def channel_layer_norm(x, weight, bias, eps: float = 1e-5):
    """LayerNorm over the channels of every pixel. x: (N, C, H, W), weight, bias: (C,) -> (N, C, H, W).

    EIMN's LayerNorm between blocks: ``nn.LayerNorm(C)`` on the NHWC view, permuted back (a channels_last-strided
    result, as the model has it).
    """
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)


def conv1x1(x, w, b, gate=None, residual=None, act: int = 0):
    """1x1 convolution with its epilogue. x: (N, C, H, W), w: (Co, C, 1, 1), b: (Co,) -> (N, Co, H, W):
    ``act(W x + b) [* gate] [+ residual]``, act 0 identity, 1 exact GELU; gate / residual (N, Co, H, W) or None."""
    y = F.conv2d(x, w, b)
    if act == 1:
        y = F.gelu(y)
    if gate is not None:
        y = y * gate
    if residual is not None:
        y = y + residual
    return y


def molrcm(x, p: dict, c1: int, c2: int):
    """Whole MOLRCM from a dict of its parameters (official state_dict names)."""
    q, v = proj_qv(x, p["proj_query.0.weight"], p["proj_query.0.bias"],
                   p["proj_value.0.weight"], p["proj_value.0.bias"])
    y = dw_mix(q, p["region.weight"], p["region.bias"], p["spatial_1.weight"], p["spatial_1.bias"],
               p["spatial_2.weight"], p["spatial_2.bias"], c1, c2)
    return gate_out(y, v, p["fusion.weight"], p["fusion.bias"], p["out.weight"], p["out.bias"])


def sadffm(x, p: dict, eps: float = 1e-6):
    """Whole SADFFM from a dict of its parameters (official state_dict names)."""
    h = gated_dwconv(x, p["linear_in.weight"], p["linear_in.bias"], p["SAL.weight"], p["SAL.bias"])
    return dffm_out(h, p["linear_out.weight"], p["linear_out.bias"],
                    p["DFFM.norm.weight"], p["DFFM.norm.bias"],
                    p["DFFM.global_reduce.weight"], p["DFFM.global_reduce.bias"],
                    p["DFFM.local_reduce.weight"], p["DFFM.local_reduce.bias"],
                    p["DFFM.channel_expand.weight"], p["DFFM.channel_expand.bias"],
                    p["DFFM.spatial_expand.weight"], p["DFFM.spatial_expand.bias"], eps)
