"""The official weights reproduce the authors' PSNR/SSIM (authors_measured_psnr_ssim.txt).

Set5 for every weight file runs in the normal suite, on the reference path (eager port) and on
the fused path (backend 'auto'); Set14 is marked slow. LR images are made once per scale and
shared. EIMN_TEST_THREADS=N sets torch's CPU threads (1 helps a lot on an oversubscribed machine).
"""

import pytest
import torch

from eimn import load_model
from eimn.evaluate import evaluate_samples, load_dataset, parse_authors_file

WEIGHTS = ["EIMN_L_x2", "EIMN_L_x3", "EIMN_A_x2", "EIMN_A_x3", "EIMN_A_x4"]
PSNR_TOL, SSIM_TOL = 0.002, 0.0002
_LR: dict = {}


pytestmark = pytest.mark.usefixtures("test_threads")


@pytest.fixture
def authors(shared):
    return parse_authors_file(str(shared("reference", "authors_measured_psnr_ssim.txt")))


def _samples(shared, dataset, scale):
    key = (dataset, scale)
    if key not in _LR:
        _LR[key] = load_dataset(str(shared("datasets", dataset)), scale)
    return _LR[key]


def _check(shared, authors, name, dataset, fused):
    weights = shared("weights", f"{name}.pth")
    model = load_model(weights, fused=fused, backend="auto")
    scale = model.scale
    samples = _samples(shared, dataset, scale)
    with torch.inference_mode():
        res = evaluate_samples(model, samples, scale, dataset=dataset)
    want_psnr, want_ssim = authors[(model.variant, scale, dataset)]
    msg = (f"{name} {dataset} {'fused' if fused else 'reference'}: PSNR {res.mean_psnr:.5f} vs {want_psnr:.5f}, "
           f"SSIM {res.mean_ssim:.6f} vs {want_ssim:.6f}")
    print(msg)
    assert len(res.names) == len(samples)
    assert abs(res.mean_psnr - want_psnr) <= PSNR_TOL, msg
    assert abs(res.mean_ssim - want_ssim) <= SSIM_TOL, msg


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("name", WEIGHTS)
def test_set5_matches_authors(shared, authors, name, fused):
    _check(shared, authors, name, "Set5", fused)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("name", WEIGHTS)
def test_set14_matches_authors(shared, authors, name, fused):
    _check(shared, authors, name, "Set14", fused)
