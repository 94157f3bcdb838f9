"""Loading official EIMN weight files (.pth / .pt / .safetensors)."""
from __future__ import annotations

import os
import pickle
import re
import warnings

import torch

from .model import EIMN

__all__ = ["load_state_dict_file", "infer_config", "load_model"]

_BLOCK_RE = re.compile(r"^block(\d+)\.0\.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` (torch pickle with weights_only=True, or safetensors).

    Unwraps the common ``{"params": ...}`` / ``{"state_dict": ...}`` wrappers and a
    ``module.`` prefix. Raises FileNotFoundError or ValueError with the reason.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on environment
            raise ValueError(f"{path}: reading .safetensors needs the 'safetensors' package") from e
        try:
            sd = load_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({_first_line(e)})") from e
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "allowed global" not in str(e) and "Unsupported global" not in str(e):
                raise ValueError(f"{path}: not a readable torch weights file (truncated, corrupt, or not a "
                                 f"state_dict): {type(e).__name__}") from e
            raise ValueError(f"{path}: refused: the file holds Python objects other than tensors and containers "
                             "(torch.load(weights_only=True) does not run the code a pickle may carry); save "
                             "the state_dict alone, or as .safetensors") from e
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch weights file "
                             f"(truncated, corrupt, or not a state_dict): {type(e).__name__}: {_first_line(e)}") from e
    if isinstance(sd, dict):
        for key in ("params_ema", "params", "state_dict", "model"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ValueError(f"{path}: expected a dict of parameter name -> tensor, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    _warn_non_finite(sd, path)
    return sd


def _first_line(e: BaseException) -> str:
    """An exception's message, first line only (the loader's errors are one line)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _warn_non_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    """Warn (RuntimeWarning) when floating tensors of ``sd`` hold NaN or Inf: the model would output NaN."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"{source}: {len(bad)} tensor(s) hold NaN or Inf values ({', '.join(bad[:3])}{more}); "
                      "the model's outputs will not be finite", RuntimeWarning, stacklevel=3)


def infer_config(sd: dict[str, torch.Tensor], source: str = "state_dict") -> dict:
    """Infer EIMN constructor arguments (embed_dims, scale, num_stages, mlp_ratio) from a state_dict."""
    missing = [k for k in ("head.0.weight", "tail.0.weight") if k not in sd]
    if missing:
        raise ValueError(f"{source}: not an EIMN state_dict (missing {', '.join(missing)}; "
                         f"first keys: {', '.join(list(sd)[:4]) or 'none'})")
    head, tail = sd["head.0.weight"], sd["tail.0.weight"]
    if head.dim() != 4 or tail.dim() != 4:
        raise ValueError(f"{source}: head.0.weight / tail.0.weight must be 4-d conv weights")
    embed_dims, in_chans = head.shape[0], head.shape[1]
    out_ch = tail.shape[0]
    scale = int(round((out_ch / in_chans) ** 0.5))
    if scale < 1 or in_chans * scale * scale != out_ch:
        raise ValueError(f"{source}: tail.0.weight has {out_ch} output channels, "
                         f"not {in_chans}*scale^2 for an integer scale")
    blocks = sorted({int(m.group(1)) for k in sd for m in [_BLOCK_RE.match(k)] if m})
    if not blocks:
        raise ValueError(f"{source}: not an EIMN state_dict (no block<i>.0.* keys)")
    if blocks != list(range(1, len(blocks) + 1)):
        raise ValueError(f"{source}: block indices are not contiguous from 1: {blocks}")
    hidden2 = sd.get("block1.0.mlp.linear_in.weight")
    if hidden2 is None:
        raise ValueError(f"{source}: missing block1.0.mlp.linear_in.weight")
    hidden = hidden2.shape[0] // 2
    # mlp_ratio such that int(dim * ratio) == hidden; 2.66 for the official models
    mlp_ratio = 2.66 if int(embed_dims * 2.66) == hidden else hidden / embed_dims
    return dict(embed_dims=embed_dims, scale=scale, num_stages=len(blocks),
                mlp_ratio=mlp_ratio, in_chans=in_chans)


def variant_name(cfg: dict) -> str:
    """'EIMN_L' (16 stages), 'EIMN_A' (14 stages) or 'EIMN(<stages>)'."""
    if cfg["embed_dims"] == 64:
        if cfg["num_stages"] == 16:
            return "EIMN_L"
        if cfg["num_stages"] == 14:
            return "EIMN_A"
    return f"EIMN(dim={cfg['embed_dims']},stages={cfg['num_stages']})"


def load_model(path: str | os.PathLike, fused: bool = False, backend: str = "auto",
               map_location: str | torch.device = "cpu") -> EIMN:
    """Build the EIMN described by the weight file at ``path`` and load it (strict), in eval mode.

    Variant (number of blocks) and scale (tail channels) are read from the keys.
    ``fused=True`` swaps in the eimn_kernels fused layers. Raises ValueError for a
    file that is not an EIMN state_dict.
    """
    sd = load_state_dict_file(path)
    cfg = infer_config(sd, source=os.fspath(path))
    model = EIMN(**cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{os.fspath(path)}: keys or shapes do not match an EIMN model: "
                         f"{str(e).splitlines()[0]} ...") from e
    model.variant = variant_name(cfg)
    if fused:
        from eimn_kernels import fuse
        fuse(model, backend=backend)
    return model.to(map_location).eval()
