"""The ``eimn`` command line: upscale (gray, RGBA, JPEG/WebP, tiling), eval, and clean errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eimn.cli import main
from eimn.evaluate import make_lr
from eimn.imresize import imresize
from eimn.upscale import num_tiles, tile_starts, tile_weights, upscale_tiled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = ["--threads", os.environ.get("EIMN_TEST_THREADS", "0")]


pytestmark = pytest.mark.usefixtures("test_threads")


@pytest.fixture
def weights(shared):
    return str(shared("weights", "EIMN_A_x2.pth"))


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, *needles):
    assert rc == 1
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("eimn: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# ----------------------------------------------------------------------------- tiling

def test_tile_starts_cover_and_overlap():
    for length, tile, ov in [(100, 32, 8), (33, 32, 8), (64, 32, 0), (7, 32, 8), (97, 40, 39)]:
        starts = tile_starts(length, tile, ov)
        assert starts[0] == 0 and min(length, starts[-1] + tile) == length
        for a, b in zip(starts, starts[1:]):
            assert a < b and a + tile - b >= ov
    with pytest.raises(ValueError):
        tile_starts(100, 32, 32)


def test_tile_weights_partition_of_unity_in_overlap():
    # two tiles [0, 40) and [24, 64) overlapping by 16 with a ramp of 16: weights sum to 1
    w1 = tile_weights(0, 40, 0, 1, 64, 1, 16)[:, 0]
    w2 = tile_weights(24, 64, 0, 1, 64, 1, 16)[:, 0]
    total = torch.zeros(64)
    total[0:40] += w1
    total[24:64] += w2
    torch.testing.assert_close(total, torch.ones(64))


def test_tiled_equals_whole_for_a_local_model():
    def local(x):                         # pointwise "model": tiling must be exact
        return torch.sigmoid(3 * x).repeat_interleave(2, -1).repeat_interleave(2, -2)
    x = torch.rand(1, 3, 37, 50)
    whole = upscale_tiled(local, x, 2, 0)
    calls = []
    tiled = upscale_tiled(local, x, 2, 16, 5, progress=calls.append)
    torch.testing.assert_close(tiled, whole, rtol=1e-6, atol=1e-6)
    assert len(calls) == num_tiles(37, 50, 16, 5) == 3 * 5


def test_out_of_memory_falls_back_to_tiles():
    from eimn.upscale import upscale_image

    def picky(x):                         # "runs out of memory" above 20x20 pixels
        if x.shape[-1] * x.shape[-2] > 400:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x.repeat_interleave(3, -1).repeat_interleave(3, -2)
    x = torch.rand(1, 3, 50, 45)
    sizes = []
    y = upscale_image(picky, x, 3, tile=0, overlap=4, min_tile=8, on_retry=sizes.append)
    assert sizes == [25, 12] and y.shape == (1, 3, 150, 135)
    torch.testing.assert_close(y, x.repeat_interleave(3, -1).repeat_interleave(3, -2))
    with pytest.raises(RuntimeError, match="boom"):
        upscale_image(lambda t: (_ for _ in ()).throw(RuntimeError("boom")), x, 3)


def test_tiled_vs_whole_on_eimn(weights, shared):
    """Tiling approximates the whole-image output (DFFM's global mean, large receptive field)."""
    from eimn import load_model
    from eimn.upscale import tile_error
    model = load_model(weights)
    hr = np.asarray(Image.open(shared("datasets", "Set5", "HR", "butterfly.png")).convert("RGB"))
    x = torch.from_numpy(hr[64:128, 64:128].copy()).permute(2, 0, 1)[None].float() / 255
    r = tile_error(model, x, 2, tile=40, overlap=16)
    print("tiled vs whole, 64x64 LR, 4 tiles of 40, overlap 16:", r)
    assert r["tiles"] == 4
    assert r["psnr_db"] > 40 and r["max_abs_uint8"] <= 16


# ----------------------------------------------------------------------------- upscale

@pytest.fixture
def images(tmp_path, shared):
    d = tmp_path / "in"
    d.mkdir()
    bridge = Image.open(shared("datasets", "Set14", "HR", "bridge.png"))
    assert bridge.mode == "L"
    bridge.crop((200, 200, 224, 220)).save(d / "bridge.png")          # grayscale, 24x20
    rgb = np.asarray(Image.open(shared("datasets", "Set5", "HR", "bird.png")).convert("RGB"))[100:120, 90:114]
    alpha = np.tile(np.linspace(0, 255, 24).round().astype(np.uint8), (20, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(d / "rgba.png")
    Image.fromarray(np.dstack([rgb[..., 1], alpha])).save(d / "gray_alpha.png")
    Image.fromarray(rgb).save(d / "photo.jpg", quality=92)
    Image.fromarray(rgb).save(d / "photo2.webp")
    (d / "notes.txt").write_text("not an image, skipped inside folders")
    return d, alpha


def test_upscale_folder_gray_rgba_jpeg_webp(tmp_path, images, weights, capsys):
    d, alpha = images
    out = tmp_path / "out"
    rc, _, err = _run(capsys, ["upscale", str(d), "-o", str(out), "--weights", weights,
                               "--backend", "reference", *THREADS])
    assert rc == 0, err
    got = {p: Image.open(out / p) for p in sorted(os.listdir(out))}
    assert sorted(got) == ["bridge_x2.png", "gray_alpha_x2.png", "photo2_x2.png", "photo_x2.png", "rgba_x2.png"]
    assert got["bridge_x2.png"].mode == "L" and got["bridge_x2.png"].size == (48, 40)
    assert got["gray_alpha_x2.png"].mode == "LA"
    assert got["rgba_x2.png"].mode == "RGBA" and got["rgba_x2.png"].size == (48, 40)
    assert got["photo_x2.png"].mode == "RGB"
    # alpha is upscaled with MATLAB bicubic, separately from the RGB
    want = np.round(np.clip(imresize(alpha / 255.0, scale=2), 0, 1) * 255)
    np.testing.assert_array_equal(np.asarray(got["rgba_x2.png"])[..., 3], want)


def test_upscale_matches_model_and_paths_agree(tmp_path, images, weights, capsys):
    d, _ = images
    src = str(d / "photo2.webp")
    outs = {}
    for label, extra in [("eager", ["--unfused"]), ("auto", ["--backend", "auto"]),
                         ("tiled", ["--backend", "reference", "--tile", "16", "--tile-overlap", "4",
                                    "--tile-report", "--ext", "webp"])]:
        o = tmp_path / label
        rc, out, err = _run(capsys, ["upscale", src, "-o", str(o), "--weights", weights, "-q", *THREADS, *extra])
        assert rc == 0, err
        outs[label] = (o, out + err)
    a = np.asarray(Image.open(outs["eager"][0] / "photo2_x2.png")).astype(int)
    b = np.asarray(Image.open(outs["auto"][0] / "photo2_x2.png")).astype(int)
    assert a.shape == (40, 48, 3) and np.abs(a - b).max() <= 1
    assert (outs["tiled"][0] / "photo2_x2.webp").exists()
    assert "vs whole image: PSNR" in outs["tiled"][1]


def test_upscale_bf16_close_to_fp32(tmp_path, images, weights, capsys):
    d, _ = images
    outs = []
    for extra in ([], ["--bf16"]):
        o = tmp_path / ("bf16" if extra else "fp32")
        rc, _, err = _run(capsys, ["upscale", str(d / "photo.jpg"), "-o", str(o), "--weights", weights,
                                   "--backend", "reference", "--device", "cpu", "-q", *THREADS, *extra])
        assert rc == 0, err
        outs.append(np.asarray(Image.open(o / "photo_x2.png")).astype(int))
    assert np.abs(outs[0] - outs[1]).mean() < 2.0


@pytest.mark.slow
def test_upscale_full_bridge_grayscale(tmp_path, shared, weights, capsys):
    rc, _, err = _run(capsys, ["upscale", str(shared("datasets", "Set14", "HR", "bridge.png")), "-o",
                               str(tmp_path), "--weights", weights, "--tile", "192", *THREADS])
    assert rc == 0, err
    im = Image.open(tmp_path / "bridge_x2.png")
    assert im.mode == "L" and im.size == (1024, 1024)


# ----------------------------------------------------------------------------- errors

def test_error_missing_input(tmp_path, weights, capsys):
    rc, _, err = _run(capsys, ["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path), "--weights", weights])
    _assert_one_line_error(rc, err, "nope.png", "no such file")


def test_error_non_image_file(tmp_path, weights, capsys):
    p = tmp_path / "fake.png"
    p.write_text("hello")
    rc, _, err = _run(capsys, ["upscale", str(p), "-o", str(tmp_path / "o"), "--weights", weights])
    _assert_one_line_error(rc, err, "fake.png", "not an image")
    rc, _, err = _run(capsys, ["upscale", str(tmp_path / "o"), "-o", str(tmp_path / "o"), "--weights", weights])
    _assert_one_line_error(rc, err, "no such file or folder")


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "not_eimn"])
def test_error_wrong_weights(tmp_path, shared, weights, capsys, kind):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    w = tmp_path / "w.pth"
    if kind == "garbage":
        w.write_bytes(b"\x00not a torch file" * 10)
    elif kind == "truncated":
        w.write_bytes(open(weights, "rb").read()[:5000])
    elif kind == "not_eimn":
        torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, w)
    want = {"missing": "not found", "garbage": "not a readable weights file",
            "truncated": "not a readable weights file", "not_eimn": "not an EIMN state_dict"}[kind]
    rc, _, err = _run(capsys, ["upscale", str(img), "-o", str(tmp_path / "o"), "--weights", str(w)])
    _assert_one_line_error(rc, err, want)
    rc, _, err = _run(capsys, ["eval", "--weights", str(w), "--dataset", str(tmp_path)])
    _assert_one_line_error(rc, err, want)


def test_error_unavailable_backend_and_device(tmp_path, weights, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    if not torch.cuda.is_available():
        rc, _, err = _run(capsys, ["upscale", str(img), "-o", str(tmp_path), "--weights", weights,
                                   "--device", "cuda"])
        _assert_one_line_error(rc, err, "no CUDA GPU")
        rc, _, err = _run(capsys, ["upscale", str(img), "-o", str(tmp_path), "--weights", weights,
                                   "--backend", "cuda", "--device", "cpu"])
        _assert_one_line_error(rc, err, "backend 'cuda'")


def test_error_scale_mismatch_and_dataset(tmp_path, weights, capsys):
    rc, _, err = _run(capsys, ["eval", "--weights", weights, "--dataset", str(tmp_path), "--scale", "3"])
    _assert_one_line_error(rc, err, "x2", "--scale 3")
    rc, _, err = _run(capsys, ["eval", "--weights", weights, "--dataset", str(tmp_path / "nope")])
    _assert_one_line_error(rc, err, "no such dataset folder")


def test_python_m_eimn_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "eimn", "upscale", str(tmp_path / "x.png"), "-o", str(tmp_path),
                        "--weights", str(tmp_path / "w.pth")], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 1 and r.stderr.startswith("eimn: error: ") and "Traceback" not in r.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "upscale" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["upscale", "x.png"])                      # -o and --weights are required
    assert e.value.code == 2


# ----------------------------------------------------------------------------- eval

@pytest.fixture
def tiny_dataset(tmp_path, shared):
    hr = tmp_path / "Tiny" / "HR"
    hr.mkdir(parents=True)
    for name, box in [("butterfly", (40, 40, 90, 78)), ("head", (100, 90, 138, 140))]:
        Image.open(shared("datasets", "Set5", "HR", f"{name}.png")).convert("RGB").crop(box).save(hr / f"{name}.png")
    return tmp_path / "Tiny"


def test_eval_compare_json_and_lr_pairs(tmp_path, tiny_dataset, weights, capsys):
    js = tmp_path / "r.json"
    rc, out, err = _run(capsys, ["eval", "--weights", weights, "--dataset", str(tiny_dataset), "--compare",
                                 "--per-image", "--json", str(js), "-q", *THREADS])
    assert rc == 0, err
    assert "reference" in out and "fused:auto" in out and "PSNR" in out and "butterfly" in out
    doc = json.loads(js.read_text())
    ref, fused = doc["results"]
    assert ref["path"] == "reference" and fused["path"].startswith("fused:auto")
    assert ref["images"] == 2 and ref["dataset"] == "Tiny" and ref["scale"] == 2
    assert 20 < ref["psnr"] < 60 and 0.5 < ref["ssim"] <= 1
    assert abs(ref["psnr"] - fused["psnr"]) < 1e-3 and abs(ref["ssim"] - fused["ssim"]) < 1e-5

    # the same images given as HR/LR pairs (LR named like 'butterfly_x2.png') give the same numbers
    lr = tmp_path / "LR"
    lr.mkdir()
    for f in os.listdir(tiny_dataset / "HR"):
        hr = np.asarray(Image.open(tiny_dataset / "HR" / f))
        hr = hr[:hr.shape[0] // 12 * 12, :hr.shape[1] // 12 * 12]
        Image.fromarray(make_lr(hr, 2)).save(lr / f.replace(".png", "_x2.png"))
    rc, out, err = _run(capsys, ["eval", "--weights", weights, "--dataset", str(tiny_dataset), "--lr", str(lr),
                                 "--unfused", "--json", "-", "-q", *THREADS])
    assert rc == 0, err
    pair = json.loads(out)["results"][0]          # with --json -, stdout holds only the JSON
    assert pair["path"] == "reference"
    assert pair["psnr"] == pytest.approx(ref["psnr"], abs=1e-9)
    assert pair["ssim"] == pytest.approx(ref["ssim"], abs=1e-12)


# ----------------------------------------------------------------------------- 16-bit images, --outscale

def _eager_sr(weights, rgb):
    import eimn
    m = eimn.load_model(weights)
    with torch.no_grad():
        y = m(torch.from_numpy(rgb).permute(2, 0, 1)[None].float()).clamp(0, 1)
    return y[0].permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("fmt,gray", [("png", False), ("png", True), ("tif", False), ("tif", True)])
def test_sixteen_bit_input_is_read_and_written_at_full_precision(tmp_path, weights, capsys, fmt, gray):
    png = pytest.importorskip("png")
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(1)
    a16 = rng.integers(0, 65536, size=(9, 7) if gray else (9, 7, 3), dtype=np.uint16)
    src = tmp_path / f"in16.{fmt}"
    if fmt == "png":
        with open(src, "wb") as f:
            png.Writer(7, 9, greyscale=gray, bitdepth=16).write(f, a16.reshape(9, -1))
    else:
        tifffile.imwrite(src, a16, photometric="minisblack" if gray else "rgb")
    rc, _, err = _run(capsys, ["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", weights, "--ext",
                               "same", "--unfused", "-q", *THREADS])
    assert rc == 0, err
    dst = tmp_path / "o" / f"in16_x2.{fmt}"
    if fmt == "png":
        w, h, rows, info = png.Reader(filename=str(dst)).asDirect()
        assert info["bitdepth"] == 16 and info["greyscale"] == gray
        out = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, -1)
    else:
        out = tifffile.imread(dst)
        assert out.dtype == np.uint16
        out = out.reshape(out.shape[0], out.shape[1], -1)
    assert out.shape[:2] == (18, 14) and out.shape[2] == (1 if gray else 3)
    rgb = (np.repeat(a16[..., None], 3, axis=2) if gray else a16).astype(np.float32) / 65535.0
    want = _eager_sr(weights, rgb)
    if gray:
        want = (0.299 * want[..., 0] + 0.587 * want[..., 1] + 0.114 * want[..., 2])[..., None]
    # within 16-bit quantisation (7.6e-6) + fp32 differences; an 8-bit path would be off by up to 2e-3
    assert np.abs(out / 65535.0 - want).max() < 2e-4
    inner = out[(out > 0) & (out < 65535)]  # not clamped
    assert (inner % 257 != 0).mean() > 0.95  # not 8-bit values widened to 16 bits


def test_eight_bit_input_stays_eight_bit(tmp_path, weights, capsys):
    src = tmp_path / "in8.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(src)
    rc, _, err = _run(capsys, ["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", weights, "-q",
                               *THREADS])
    assert rc == 0, err
    with Image.open(tmp_path / "o" / "in8_x2.png") as im:
        assert im.mode == "RGB" and im.size == (10, 12)


def test_outscale_resizes_the_output(tmp_path, weights, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 10, 4), dtype=np.uint8), "RGBA").save(src)
    rc, _, err = _run(capsys, ["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", weights, "-q",
                               "--outscale", "1.5", *THREADS])
    assert rc == 0, err
    with Image.open(tmp_path / "o" / "a_x1.5.png") as im:
        assert im.size == (15, 12) and im.mode == "RGBA"
    with pytest.raises(SystemExit):
        main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", weights, "--outscale", "0"])
