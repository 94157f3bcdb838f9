"""``eimn`` command line: ``eimn upscale`` (super-resolve image files) and ``eimn eval`` (PSNR/SSIM).

Run ``eimn upscale -h`` / ``eimn eval -h`` for the options. Errors print one line
(``eimn: error: ...``) and exit with status 1 (2 for bad usage); set EIMN_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

__all__ = ["main", "build_parser"]

BACKEND_CHOICES = ("auto", "reference", "cpu", "triton", "cuda")


class CLIError(Exception):
    """An error reported to the user as one line, without a traceback."""


# --------------------------------------------------------------------------- parser

def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and device")
    g.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="kernel backend of the fused path (default auto: fastest available, "
                        "pure-PyTorch 'reference' ops where no kernel runs)")
    g.add_argument("--unfused", action="store_true",
                   help="run the faithful eager port (eimn/model.py, the reference path) instead of "
                        "the fused layers; --backend is then ignored")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    prec = g.add_mutually_exclusive_group()
    prec.add_argument("--half", action="store_true", help="run the model in float16")
    prec.add_argument("--bf16", action="store_true",
                      help="bfloat16: on a GPU (or with --unfused) the model in bfloat16; on CPU the fused model's "
                           "1x1 GEMMs in bfloat16 with float32 sums, the rest float32 (needs AVX512-BF16; without "
                           "AMX not faster than float32, see the README)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    t = p.add_argument_group("tiling")
    t.add_argument("--tile", type=_nonneg_int, default=0,
                   help="LR tile size in pixels (0 = whole image; on out-of-memory tiles are used "
                        "automatically). Tiling is an approximation: DFFM uses a global mean")
    t.add_argument("--tile-overlap", type=_nonneg_int, default=32,
                   help="overlap of neighbouring tiles in LR pixels, blended linearly (default 32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _outscale_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--outscale must be a number, got {s!r}") from None
    if not (v > 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(f"--outscale must be a positive number, got {s}")
    return v


def _size_arg(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 180x320, got {s!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {s}")
    return h, w


def _scale_arg(s: str):
    if s == "auto":
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be 'auto' or an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--scale must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``eimn`` with subcommands upscale and eval."""
    p = argparse.ArgumentParser(prog="eimn", description="EIMN super-resolution: upscale images, "
                                "evaluate PSNR/SSIM on benchmark datasets.")
    sub = p.add_subparsers(dest="command", metavar="{upscale,eval,export-onnx}")
    sub.required = True

    u = sub.add_parser("upscale", help="super-resolve image files or folders",
                       description="Super-resolve PNG/JPEG/WebP (also BMP/TIFF) images. Grayscale "
                       "images are run as RGB and written back as grayscale; an alpha channel is "
                       "upscaled separately with MATLAB-style bicubic interpolation (--alpha model to "
                       "run it through the network). 16-bit PNG/TIFF input is read at full precision and "
                       "written with 16 bits (PNG, TIFF output); other input is written with 8.")
    u.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    u.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    u.add_argument("--weights", required=True, metavar="FILE", help="EIMN weight file (.pth/.pt/.safetensors)")
    u.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic",
                   help="how to upscale an alpha channel (default bicubic)")
    u.add_argument("--ext", default="png", choices=("png", "tif", "jpg", "webp", "same"),
                   help="output format (default png; 'same' keeps the input's extension)")
    u.add_argument("--outscale", type=_outscale_arg, default=None, metavar="F",
                   help="final size factor of the output (e.g. 3.5 with an x4 model): the model's output is "
                        "resized by antialiased bicubic interpolation (default: the model's scale)")
    u.add_argument("--suffix", default="_x{scale}",
                   help="appended to the output file stem; {scale} is replaced by the model's scale or "
                        "--outscale (default _x{scale})")
    u.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    u.add_argument("--tile-report", action="store_true",
                   help="with --tile: also run the whole image and print how far the tiled output is")
    _common(u)

    e = sub.add_parser("eval", help="PSNR/SSIM on benchmark datasets",
                       description="PSNR and SSIM (Y channel, border = scale) with the protocol of "
                       "reference/SPEC.md: HR mod-cropped to 12, LR by MATLAB bicubic in float, uint8 "
                       "rounding. Give HR folders (LR generated) or --lr for HR/LR pairs.")
    e.add_argument("--weights", required=True, nargs="+", metavar="FILE", help="EIMN weight file(s)")
    e.add_argument("--dataset", required=True, nargs="+", metavar="DIR",
                   help="dataset folder(s): images, or an HR/ sub-folder of images")
    e.add_argument("--lr", metavar="DIR", default=None,
                   help="folder of LR images paired by name with the HR (one dataset only)")
    e.add_argument("--scale", type=_scale_arg, default="auto",
                   help="'auto' (from the weights) or the integer scale, checked against the weights")
    e.add_argument("--mod", type=int, default=12, help="HR mod-crop (default 12)")
    e.add_argument("--compare", action="store_true",
                   help="evaluate both the reference path (eager port) and the fused path")
    e.add_argument("--authors", metavar="FILE", default=None,
                   help="authors_measured_psnr_ssim.txt: add the authors' numbers and the differences")
    e.add_argument("--per-image", action="store_true", help="print a row per image")
    e.add_argument("--json", metavar="FILE", default=None, help="write results as JSON ('-' = stdout)")
    _common(e)
    x = sub.add_parser("export-onnx", help="export the folded model to ONNX (plain operators)",
                       description="Export the model of a weight file, BatchNorm and layer scales folded, to an "
                       "ONNX file of plain operators (no custom ops) for ONNX Runtime, OpenVINO, TensorRT. Input "
                       "'input' (N, 3, H, W) RGB in [0, 1], output 'output' (N, 3, scale*H, scale*W); batch, "
                       "height and width dynamic unless --static. Checked against the eager model in ONNX "
                       "Runtime when it is installed.")
    x.add_argument("--weights", required=True, metavar="FILE", help="EIMN weight file (.pth/.pt/.safetensors)")
    x.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    x.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    x.add_argument("--fp16", action="store_true", help="float16 model, input and output")
    x.add_argument("--static", type=_size_arg, default=None, metavar="HxW",
                   help="a fixed input size (batch 1) instead of dynamic batch, height and width")
    x.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.export-based (default) or PyTorch's older TorchScript exporter (faster)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    return p


# --------------------------------------------------------------------------- shared helpers

def _note(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _device(spec: str):
    import torch
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise CLIError(f"unknown --device {spec!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"unsupported --device {spec!r} (use cpu, cuda, cuda:N or auto)")
    return dev


def _dtype(args):
    import torch
    return torch.float16 if args.half else torch.bfloat16 if args.bf16 else torch.float32


def _cpu_bf16(args, device, fused: bool) -> bool:
    """--bf16 on CPU for the fused model (backend auto or cpu): float32 tensors with bfloat16 GEMMs
    (optimize_for_inference(precision="bf16")) rather than a bfloat16 model, which only the slow reference ops would
    run (--backend reference still does that). Fails early, in one line, where the CPU has no bfloat16 instructions."""
    if not (args.bf16 and fused and device.type == "cpu" and args.backend in ("auto", "cpu")):
        return False
    ek = _import_kernels()
    try:
        ek.require_bf16_engine()
    except RuntimeError as e:
        raise CLIError(f"--bf16 on CPU: {e}") from None
    return True


def _run_dtype(args, device, fused: bool):
    """The dtype the model and its inputs run in: float32 where --bf16 means bfloat16 GEMMs on CPU."""
    import torch
    return torch.float32 if _cpu_bf16(args, device, fused) else _dtype(args)


def _import_kernels():
    """Import eimn_kernels without its 'extension not built' warning: an explicit --backend that
    cannot run is reported by _check_backend, and 'auto' shows what it picked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        import eimn_kernels
    return eimn_kernels


def _check_backend(args, device, dtype) -> str:
    """Fail early with one line if --backend cannot run on device/dtype; returns what 'auto' picks."""
    import torch
    if args.unfused:
        return "eager"
    ek = _import_kernels()
    probe = torch.empty(0, device=device, dtype=dtype)
    try:
        return ek.resolve_backend(args.backend, probe)
    except (ValueError, RuntimeError, TypeError) as e:
        raise CLIError(str(e)) from None


def _load(path: str, fused: bool, backend: str, device, dtype, cpu_bf16: bool = False):
    """The model of weight file ``path`` on ``device`` / ``dtype``, eval mode. ``fused``: the inference form of the
    fused model (eimn_kernels.optimize_for_inference: BatchNorm and layer scales folded, fused layers and channel
    LayerNorms; the CLI only runs inference), else the eager port. ``cpu_bf16``: its 1x1 GEMMs in bfloat16
    (precision="bf16"; float32 model)."""
    from .load import load_model
    if fused:
        ek = _import_kernels()
    try:
        model = load_model(path, fused=fused, backend=backend)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(_weights_error(path, e)) from None
    if fused:
        model = ek.optimize_for_inference(model, backend=backend, inplace=True,
                                          precision="bf16" if cpu_bf16 else "fp32")
    return model.to(device=device, dtype=dtype)


def _weights_error(path: str, e: BaseException) -> str:
    """One line for a weight file that cannot be loaded (torch's unpickling errors are pages long)."""
    cause = e.__cause__
    if isinstance(e, ValueError) and cause is not None and "not a readable" in str(e):
        return f"{path}: not a readable weights file (truncated, corrupt, or not a state_dict; " \
               f"{type(cause).__name__})"
    return _one_line(e)


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= 400 else msg[:397] + "..."


def _setup_torch(args):
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return torch


def _tqdm(args, **kw):
    from tqdm import tqdm
    return tqdm(disable=args.quiet, file=sys.stderr, dynamic_ncols=True, **kw)


def _path_label(args, resolved: str) -> str:
    if args.unfused:
        return "reference"
    return f"fused:{args.backend}" + (f"->{resolved}" if args.backend == "auto" else "")


# --------------------------------------------------------------------------- upscale

def _output_path(args, src: str, scale: int) -> str:
    stem, ext = os.path.splitext(os.path.basename(src))
    if args.ext != "same":
        ext = "." + args.ext
    elif ext.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        ext = ".png"
    shown = f"{args.outscale:g}" if args.outscale is not None else str(scale)
    return os.path.join(args.output, stem + args.suffix.replace("{scale}", shown) + ext)


def _resize_output(torch, y, h: int, w: int, outscale: float | None):
    """The model's output y (N, C, H', W') resized to round(outscale * (h, w)) of the input size (antialiased
    bicubic, torch.nn.functional.interpolate), clamped to [0, 1]; y itself without outscale."""
    if outscale is None:
        return y
    size = (max(1, round(h * outscale)), max(1, round(w * outscale)))
    if tuple(y.shape[-2:]) == size:
        return y
    y = torch.nn.functional.interpolate(y.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.clamp_(0, 1)


def cmd_upscale(args) -> int:
    """Super-resolve every input image into args.output."""
    torch = _setup_torch(args)
    import numpy as np

    from .data import check_image, list_images, read_image, save_image
    from .imresize import imresize
    from .upscale import num_tiles, tile_error, upscale_image

    files = list_images(args.inputs, recursive=args.recursive)
    for f in files:            # fail on a bad file before loading the model
        check_image(f)
    device = _device(args.device)
    cpu_bf16 = _cpu_bf16(args, device, not args.unfused)
    dtype = _run_dtype(args, device, not args.unfused)
    resolved = _check_backend(args, device, dtype)
    model = _load(args.weights, not args.unfused, args.backend, device, dtype, cpu_bf16)
    scale = model.scale
    outs = [_output_path(args, f, scale) for f in files]
    dup = {o for o in outs if outs.count(o) > 1}
    if dup:
        raise CLIError(f"two inputs would be written to the same file {sorted(dup)[0]} "
                       f"(same name in different folders); upscale them separately")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CLIError(f"{args.output}: exists and is not a folder")
    os.makedirs(args.output, exist_ok=True)
    _note(args, f"{model.variant} x{scale}, path {_path_label(args, resolved)}, {device}, "
          f"{str(dtype).replace('torch.', '')}{' with bfloat16 GEMMs' if cpu_bf16 else ''}, {len(files)} image(s)")

    def run(x_np: np.ndarray, bar) -> np.ndarray:
        x = torch.from_numpy(x_np).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
        bar.reset(total=num_tiles(x.shape[-2], x.shape[-1], args.tile, args.tile_overlap))
        y = upscale_image(model, x, scale, tile=args.tile, overlap=args.tile_overlap,
                          progress=bar.update,
                          on_retry=lambda t: _note(args, f"note: out of memory, retrying with --tile {t}"))
        y = _resize_output(torch, y.clamp_(0, 1), x.shape[-2], x.shape[-1], args.outscale)
        return y[0].permute(1, 2, 0).float().cpu().numpy()

    t0 = time.time()
    with _tqdm(args, total=len(files), unit="img", desc="upscale") as bar_img, \
            _tqdm(args, total=1, unit="tile", desc="tiles", leave=False) as bar_tile:
        for src, dst in zip(files, outs):
            im = read_image(src)
            bar_img.set_postfix_str(os.path.basename(src))
            with torch.no_grad():
                sr = run(im.rgb, bar_tile)
                alpha = None
                if im.alpha is not None:
                    if args.alpha == "model":
                        alpha = run(np.repeat(im.alpha[..., None], 3, axis=2), bar_tile).mean(axis=2)
                    else:
                        alpha = np.clip(imresize(im.alpha, scale=scale), 0.0, 1.0)
                        if args.outscale is not None:
                            a = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
                            h, w = im.alpha.shape
                            alpha = _resize_output(torch, a, h, w, args.outscale)[0, 0].numpy()
                if args.tile_report and args.tile > 0:
                    x = torch.from_numpy(im.rgb).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
                    r = tile_error(model, x, scale, args.tile, args.tile_overlap)
                    _tqdm_write(f"{os.path.basename(src)}: tiled ({r['tiles']} tiles of {args.tile}, "
                               f"overlap {args.tile_overlap}) vs whole image: PSNR {r['psnr_db']:.2f} dB, "
                               f"max |diff| {r['max_abs_float']:.4f} ({r['max_abs_uint8']} in 8-bit)")
            save_image(dst, sr, alpha=alpha, gray=im.gray, bits=im.bits)
            bar_img.update(1)
    _note(args, f"wrote {len(files)} image(s) to {args.output} in {time.time() - t0:.1f}s")
    return 0


def _tqdm_write(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg)


# --------------------------------------------------------------------------- eval

_COLS = [("model", 12), ("scale", 5), ("dataset", 14), ("path", 24), ("images", 6), ("PSNR", 8),
         ("SSIM", 8)]
_AUTH_COLS = [("authors PSNR", 12), ("authors SSIM", 12), ("dPSNR", 8), ("dSSIM", 9)]


def _table_header(with_authors: bool) -> str:
    cols = _COLS + (_AUTH_COLS if with_authors else [])
    return "\n".join(["  ".join(n.ljust(w) for n, w in cols).rstrip(),
                      "  ".join("-" * w for _, w in cols)])


def _table_row(r: dict, with_authors: bool) -> str:
    """One table line for a result row (dict with model, scale, dataset, path, images, psnr, ssim)."""
    cells = [str(r["model"]), str(r["scale"]), str(r["dataset"]), str(r["path"]), str(r["images"]),
             f"{r['psnr']:.4f}", f"{r['ssim']:.6f}"]
    cols = list(_COLS)
    if with_authors:
        a = r.get("authors")
        cells += ([f"{a['psnr']:.4f}", f"{a['ssim']:.6f}", f"{r['psnr'] - a['psnr']:+.4f}",
                   f"{r['ssim'] - a['ssim']:+.6f}"] if a else ["-"] * 4)
        cols += _AUTH_COLS
    return "  ".join(c.ljust(w) for c, (_, w) in zip(cells, cols)).rstrip()


def cmd_eval(args) -> int:
    """Evaluate each weight file on each dataset, on the requested path(s); print a table."""
    _setup_torch(args)
    from .evaluate import evaluate_samples, load_dataset, parse_authors_file
    from .load import infer_config, load_state_dict_file, variant_name

    if args.lr is not None and len(args.dataset) != 1:
        raise CLIError("--lr pairs LR images with one HR dataset; give a single --dataset")
    for d in args.dataset:
        if not os.path.isdir(d):
            raise CLIError(f"{d}: no such dataset folder")
    authors = None
    if args.authors:
        if not os.path.isfile(args.authors):
            raise CLIError(f"{args.authors}: no such file")
        authors = parse_authors_file(args.authors)
        if not authors:
            raise CLIError(f"{args.authors}: no 'Scale:N Dataset:NAME Avg_psnr:P Avg_ssim:S' rows found")
    device, dtype = _device(args.device), _dtype(args)

    # read every weight file first so a bad one fails before any long computation
    specs = []
    for w in args.weights:
        try:
            cfg = infer_config(load_state_dict_file(w), source=w)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(_weights_error(w, e)) from None
        if args.scale != "auto" and args.scale != cfg["scale"]:
            raise CLIError(f"{w}: the weights are for x{cfg['scale']}, not --scale {args.scale}")
        specs.append((w, cfg))

    paths = [True, False] if args.compare else [args.unfused]  # True = eager reference path
    resolved = "eager"
    if False in paths:
        saved = args.unfused
        args.unfused = False
        resolved = _check_backend(args, device, _run_dtype(args, device, True))
        args.unfused = saved

    out = sys.stderr if args.json == "-" else sys.stdout
    with_authors = authors is not None
    print(_table_header(with_authors), file=out, flush=True)
    lr_cache: dict = {}
    rows = []
    for w, cfg in specs:
        scale = cfg["scale"]
        for d in args.dataset:
            name = os.path.basename(os.path.normpath(d))
            key = (d, scale)
            if key not in lr_cache:
                with _tqdm(args, desc=f"{name} x{scale}: LR", unit="img", leave=False) as bar:
                    lr_cache[key] = load_dataset(d, scale, lr_dir=args.lr, mod=args.mod, progress=bar.update)
            samples = lr_cache[key]
            for eager in paths:
                label = "reference" if eager else f"fused:{args.backend}" + (
                    f"->{resolved}" if args.backend == "auto" else "")
                cpu_bf16, run_dtype = _cpu_bf16(args, device, not eager), _run_dtype(args, device, not eager)
                label += "+bf16gemm" if cpu_bf16 else ""
                model = _load(w, not eager, args.backend, device, run_dtype, cpu_bf16)
                desc = f"{os.path.basename(w)} {name} {label}"
                with _tqdm(args, total=len(samples), desc=desc, unit="img", leave=False) as bar:
                    res = evaluate_samples(model, samples, scale, dataset=name, path=label, device=device,
                                           dtype=run_dtype, tile=args.tile, overlap=args.tile_overlap,
                                           progress=bar.update)
                row = {"weights": w, "model": os.path.splitext(os.path.basename(w))[0],
                       "variant": variant_name(cfg), **res.to_dict()}
                if authors is not None:
                    a = authors.get((variant_name(cfg), scale, name))
                    row["authors"] = {"psnr": a[0], "ssim": a[1]} if a else None
                rows.append(row)
                del model
                print(_table_row(row, with_authors), file=out, flush=True)
                if args.per_image:
                    for n, p, q in zip(res.names, res.psnr, res.ssim):
                        print(_table_row({"model": "", "scale": "", "dataset": "  " + n, "path": "",
                                          "images": "", "psnr": p, "ssim": q}, False), file=out, flush=True)
            if args.compare:
                a, b = rows[-2], rows[-1]
                dp = max(abs(x["psnr"] - y["psnr"]) for x, y in zip(a["per_image"], b["per_image"]))
                print(f"  {a['model']} {a['dataset']}: fused vs reference: max per-image |dPSNR| {dp:.2e} dB, "
                      f"dSSIM {b['ssim'] - a['ssim']:+.2e}", file=out, flush=True)
    out_json = args.json == "-"
    if args.json:
        doc = {"protocol": {"mod_crop": args.mod, "lr": "given" if args.lr else "MATLAB bicubic (float)",
                            "channel": "Y (BT.601, float)", "border": "scale", "rounding": "uint8"},
               "device": str(device), "dtype": str(dtype).replace("torch.", ""), "results": rows}
        if out_json:
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            try:
                with open(args.json, "w") as f:
                    json.dump(doc, f, indent=1)
            except OSError as e:
                raise CLIError(f"{args.json}: cannot write JSON ({e.strerror})") from None
    return 0


# --------------------------------------------------------------------------- entry point

def cmd_export_onnx(args) -> int:
    """Export the weight file's folded model to ONNX; compare it with the eager model in ONNX Runtime."""
    import importlib.util

    from .export import check_onnx, export_onnx
    from .load import load_model
    try:
        model = load_model(args.weights)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(_weights_error(args.weights, e)) from None
    t0 = time.time()
    path = export_onnx(model, args.output, opset=args.opset, fp16=args.fp16, static=args.static,
                       exporter=args.exporter)
    size = "fixed " + "x".join(map(str, args.static)) if args.static else "dynamic batch, height and width"
    print(f"wrote {path} ({model.variant} x{model.scale}, opset {args.opset}, "
          f"{'float16' if args.fp16 else 'float32'}, {size}) in {time.time() - t0:.1f}s")
    if args.no_check:
        return 0
    if importlib.util.find_spec("onnxruntime") is None:
        print("note: onnxruntime is not installed: the export was not checked (pip install onnxruntime)")
        return 0
    sizes = ((1, *args.static),) if args.static else ((1, 23, 17), (2, 31, 29))
    diff = check_onnx(path, model, sizes=sizes)
    print(f"ONNX Runtime vs the eager model: max |diff| {diff:.2e} on inputs {', '.join(f'{n}x3x{h}x{w}' for n, h, w in sizes)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eimn`` / ``python -m eimn``; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("EIMN_DEBUG", "") not in ("", "0")
    try:
        if args.command == "upscale":
            return cmd_upscale(args)
        if args.command == "export-onnx":
            return cmd_export_onnx(args)
        return cmd_eval(args)
    except KeyboardInterrupt:
        print("eimn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line unless EIMN_DEBUG is set
        if debug:
            raise
        from .data import ImageError
        known = (CLIError, ImageError, FileNotFoundError, ValueError, TypeError, OSError)
        prefix = "" if isinstance(e, known) else f"{type(e).__name__}: "
        print(f"eimn: error: {prefix}{_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
