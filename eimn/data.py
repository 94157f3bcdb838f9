"""Image file IO for the CLI: finding images, reading them to float RGB (+ alpha), writing results."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["IMAGE_EXTS", "SIXTEEN_BIT_EXTS", "ImageError", "LoadedImage", "check_image", "list_images", "read_image",
           "read_rgb_uint8", "save_image", "to_uint8", "to_uint16"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SIXTEEN_BIT_EXTS = (".png", ".tif", ".tiff")  # formats written with 16 bits per channel when the input had them


class ImageError(ValueError):
    """A path that is missing, not an image, or an image that cannot be handled (one-line message)."""


@dataclass
class LoadedImage:
    """An image read from disk.

    rgb: (H, W, 3) float32 in [0, 1]; alpha: (H, W) float32 in [0, 1] or None;
    gray: True when the file was single-channel (L, LA, I;16, 1); bits: 8 or 16.
    """
    path: str
    rgb: np.ndarray
    alpha: np.ndarray | None
    gray: bool
    bits: int


def list_images(inputs: list[str], recursive: bool = False) -> list[str]:
    """Expand files and folders into a sorted list of image paths (by extension inside folders).

    A named file is kept whatever its extension (it is checked when read). Raises ImageError for a
    path that does not exist or a folder holding no image.
    """
    out: list[str] = []
    for p in inputs:
        if os.path.isdir(p):
            found = []
            walker = os.walk(p) if recursive else [(p, [], os.listdir(p))]
            for root, _, files in walker:
                found += [os.path.join(root, f) for f in files
                          if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(root, f))]
            if not found:
                raise ImageError(f"{p}: folder holds no image ({', '.join(IMAGE_EXTS)})")
            out += sorted(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    return out


def check_image(path: str) -> None:
    """Raise ImageError unless ``path`` is a readable image file (reads the header only)."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (cannot identify PNG/JPEG/WebP/BMP/TIFF data)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None


def _open(path: str):
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, not an image file")
    try:
        im = Image.open(path)
        im.load()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (cannot identify PNG/JPEG/WebP/BMP/TIFF data)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None
    return im


def _png_bitdepth(path: str) -> int | None:
    """The bit depth in a PNG file's header, or None for another file."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def _from_uint16(path: str, a: np.ndarray) -> LoadedImage:
    """A 16-bit (H, W), (H, W, 1..4) array (gray, gray + alpha, RGB, RGBA) as a LoadedImage of 16 bits."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"{path}: unsupported 16-bit image layout {a.shape}")
    f = a.astype(np.float64) / 65535.0
    planes = a.shape[2]
    gray = planes in (1, 2)
    rgb = np.repeat(f[..., :1], 3, axis=2) if gray else f[..., :3]
    alpha = f[..., -1] if planes in (2, 4) else None
    return LoadedImage(path=path, rgb=np.ascontiguousarray(rgb, dtype=np.float32),
                       alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32),
                       gray=gray, bits=16)


def _read_sixteen_bit(path: str) -> LoadedImage | None:
    """A 16-bit PNG (pypng) or TIFF (tifffile) at full precision; None where the file is not one (PIL reads it)."""
    try:
        if _png_bitdepth(path) == 16:
            import png
            w, h, rows, info = png.Reader(filename=path).asDirect()
            a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"])
            return _from_uint16(path, a)
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile
            a = tifffile.imread(path)
            if a.dtype == np.uint16:
                return _from_uint16(path, a)
    except ImportError as e:
        raise ImageError(f"{path}: reading 16-bit images needs the '{e.name}' package") from None
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None
    return None


def read_image(path: str) -> LoadedImage:
    """Read an image as float32 RGB (H, W, 3) in [0, 1] plus optional alpha (H, W).

    Grayscale becomes 3 equal channels (gray=True); palette images are expanded; 16-bit PNG and TIFF (gray, RGB,
    with or without alpha) keep their precision (bits=16); CMYK/YCbCr etc. are converted to RGB by PIL.
    """
    if os.path.isfile(path):
        sixteen = _read_sixteen_bit(path)
        if sixteen is not None:
            return sixteen
    im = _open(path)
    mode = im.mode
    alpha = None
    gray = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    bits = 8
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            g = np.clip(a, 0.0, 1.0) if a.max() <= 1.0 else np.clip(a / 65535.0, 0.0, 1.0)
        else:
            bits = 16 if a.max() > 255 or mode.startswith("I;16") else 8
            g = np.clip(a / (65535.0 if bits == 16 else 255.0), 0.0, 1.0)
        rgb = np.repeat(g[..., None], 3, axis=2)
    elif mode in ("1", "L"):
        g = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        rgb = np.repeat(g[..., None], 3, axis=2)
    elif mode == "LA":
        a = np.asarray(im, dtype=np.float64) / 255.0
        rgb = np.repeat(a[..., :1], 3, axis=2)
        alpha = a[..., 1]
    elif mode == "RGBA":
        a = np.asarray(im, dtype=np.float64) / 255.0
        rgb, alpha = a[..., :3], a[..., 3]
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError(f"{path}: empty image")
    return LoadedImage(path=path, rgb=np.ascontiguousarray(rgb, dtype=np.float32),
                       alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32),
                       gray=gray, bits=bits)


def read_rgb_uint8(path: str) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grayscale replicated, alpha dropped) for evaluation."""
    im = _open(path)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise ImageError(f"{path}: 16-bit/float images are not supported for evaluation (mode {im.mode})")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 by clipping and rounding half to even (np.round)."""
    return np.round(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint16(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint16 by clipping and rounding half to even (np.round)."""
    return np.round(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)


def _planes(rgb: np.ndarray, alpha: np.ndarray | None, gray: bool, quantise) -> np.ndarray:
    """(H, W, planes) of quantised gray or RGB, then alpha."""
    if gray:
        chans = [quantise(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])[..., None]]
    else:
        chans = [quantise(rgb)]
    if alpha is not None:
        chans.append(quantise(alpha)[..., None])
    return np.concatenate(chans, axis=2)


def _save_sixteen_bit(path: str, a: np.ndarray, gray: bool, alpha: bool) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".png":
        import png
        h, w, planes = a.shape
        with open(path, "wb") as f:
            png.Writer(w, h, greyscale=gray, alpha=alpha, bitdepth=16).write(f, a.reshape(h, w * planes))
    else:
        import tifffile
        tifffile.imwrite(path, a[..., 0] if a.shape[2] == 1 else a,
                         photometric="minisblack" if gray else "rgb",
                         extrasamples=["unassalpha"] if alpha else None, compression="zlib")


def save_image(path: str, rgb: np.ndarray, alpha: np.ndarray | None = None, gray: bool = False,
               quality: int = 95, bits: int = 8) -> None:
    """Write float [0, 1] ``rgb`` (H, W, 3) with optional ``alpha`` (H, W), 8 bits per channel, or 16 where
    ``bits`` is 16 and the format holds them (PNG, TIFF; see SIXTEEN_BIT_EXTS).

    gray=True writes one channel (ITU-R 601 luma of the RGB, as PIL's convert('L')). The format
    follows the extension; JPEG cannot hold alpha (it is dropped there).
    """
    from PIL import Image
    ext = os.path.splitext(path)[1].lower()
    if bits == 16 and ext in SIXTEEN_BIT_EXTS:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            _save_sixteen_bit(path, _planes(rgb, alpha, gray, to_uint16), gray, alpha is not None)
        except ImportError as e:
            raise ImageError(f"{path}: writing 16-bit images needs the '{e.name}' package") from None
        except (OSError, ValueError) as e:
            raise ImageError(f"{path}: cannot write image ({e})") from None
        return
    keep_alpha = alpha is not None and ext not in (".jpg", ".jpeg")
    arr = _planes(rgb, alpha if keep_alpha else None, gray, to_uint8)
    mode = ("L" if gray else "RGB") + ("A" if keep_alpha else "")
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)
    if img.mode != mode:
        img = img.convert(mode)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kw = {"quality": quality} if ext in (".jpg", ".jpeg", ".webp") else {}
    try:
        img.save(path, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"{path}: cannot write image ({e})") from None
