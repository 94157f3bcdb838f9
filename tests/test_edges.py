"""Drop-in behaviour at the edges: empty images, the meta device, weights that hold NaN/Inf, weight files that
weights_only refuses."""
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

import eimn
import eimn_kernels as ek
from eimn.model import MOLRCM as EagerMOLRCM
from eimn.model import SADFFM as EagerSADFFM

BACKENDS = ["reference"] + (["cpu"] if ek.backend_status("cpu", "cpu")[0] else [])
EMPTY_SHAPES = [(0, 8, 6, 5), (2, 8, 0, 5), (2, 8, 6, 0)]


def _modules(backend):
    torch.manual_seed(0)
    return [ek.MOLRCM.from_module(EagerMOLRCM(8), backend), ek.SADFFM.from_module(EagerSADFFM(8), backend),
            ek.ChannelLayerNorm.from_module(nn.LayerNorm(8), backend)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_fused_modules_on_empty_images_return_empty_like_conv2d(backend, shape):
    """N, H or W = 0: an empty output of the right shape and zero parameter gradients, as nn.Conv2d gives for an
    empty batch (for an empty H or W nn.Conv2d raises; the fused layers return the empty result all the same)."""
    x = torch.randn(shape, requires_grad=True)
    if shape[0] == 0:
        assert nn.Conv2d(8, 8, 1)(x).shape == shape  # the behaviour the fused layers follow
    for m in _modules(backend):
        y = m(x)
        assert y.shape == shape and y.dtype == x.dtype
        y.sum().backward()
        assert x.grad.shape == shape
        for p in m.parameters():
            assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()
        x.grad = None
        m.zero_grad(set_to_none=True)
    with torch.no_grad():
        for m in _modules(backend):
            assert m(x).shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_ops_on_empty_images(backend):
    x = torch.randn(0, 8, 5, 4)
    wq, bq = torch.randn(3, 8, 1, 1), torch.randn(3)
    q, v = ek.proj_qv(x, wq, bq, wq, bq, backend=backend)
    assert q.shape == v.shape == (0, 3, 5, 4)
    w_in, b_in, w_dw, b_dw = torch.randn(6, 8, 1, 1), torch.randn(6), torch.randn(6, 1, 3, 3), torch.randn(6)
    assert ek.gated_dwconv(x, w_in, b_in, w_dw, b_dw, backend=backend).shape == (0, 3, 5, 4)
    with pytest.raises(ValueError, match="w_in must have shape"):  # weights are still checked on empty input
        ek.gated_dwconv(x, w_in[:, :5], b_in, w_dw, b_dw, backend=backend)


def test_whole_model_empty_batch():
    model = eimn.EIMN_A(scale=2, fused=True).eval()
    with torch.no_grad():
        assert model(torch.rand(0, 3, 12, 10)).shape == (0, 3, 24, 20)
        assert ek.optimize_for_inference(model)(torch.rand(0, 3, 12, 10)).shape == (0, 3, 24, 20)


def test_fused_modules_and_model_on_meta_device():
    """The fused modules run on the meta device (shapes only), as torch's layers do."""
    for m in _modules("auto"):
        m = m.to("meta")
        y = m(torch.empty(2, 8, 6, 5, device="meta"))
        assert y.device.type == "meta" and y.shape == (2, 8, 6, 5)
    with torch.device("meta"):
        model = eimn.EIMN_L(scale=3, fused=True)
        y = model(torch.empty(1, 3, 10, 7))
    assert y.device.type == "meta" and y.shape == (1, 3, 30, 21)
    folded = ek.optimize_for_inference(eimn.EIMN_A(scale=2).to("meta"))
    assert folded(torch.empty(1, 3, 8, 8, device="meta")).shape == (1, 3, 16, 16)


def _small_sd():
    return eimn.EIMN(embed_dims=8, scale=2, num_stages=1, mlp_ratio=2.0).state_dict()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_warn_on_load(tmp_path, bad):
    sd = _small_sd()
    sd["head.0.weight"][0, 0, 0, 0] = bad
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.warns(RuntimeWarning, match="NaN or Inf.*head.0.weight"):
        eimn.load_model(p)
    torch.save(_small_sd(), p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        eimn.load_model(p)  # finite weights: no warning


class _CodeCarrier:
    """A pickled object that would run code on load (weights_only refuses it)."""

    def __reduce__(self):
        return (print, ("this would run on an unsafe load",))


def test_weights_only_refusal_is_one_line_valueerror(tmp_path):
    p = tmp_path / "code.pth"
    with open(p, "wb") as f:
        torch.save({"params": _small_sd(), "extra": _CodeCarrier()}, f, pickle_module=pickle)
    with pytest.raises(ValueError) as e:
        eimn.load_model(p)
    msg = str(e.value)
    assert "refused" in msg and str(p) in msg and "\n" not in msg


def test_cuda_graphs_wrapper_passes_through_and_caches_per_shape():
    """optimize_for_inference(cuda_graphs=True): CPU inputs (and any call needing a gradient) run the model itself;
    on CUDA one capture per input shape/dtype, the most recently used max_graphs kept (capture faked here)."""
    from eimn_kernels.graphs import CUDAGraphed
    model = eimn.EIMN_A(scale=2)
    g = ek.optimize_for_inference(model, cuda_graphs=True, max_graphs=2)
    assert isinstance(g, CUDAGraphed) and g.scale == 2
    x = torch.rand(1, 3, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(g(x), ek.optimize_for_inference(model)(x))
    captured = []

    class FakeGraph:
        def __init__(self, key):
            self.key = key

        def __call__(self, t):
            return t * 2

    g._use_graphs = lambda t: True
    g._capture = lambda t: captured.append(tuple(t.shape)) or FakeGraph(tuple(t.shape))
    with torch.no_grad():
        for shape in [(1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 5, 4), (1, 3, 4, 4), (1, 3, 6, 4), (1, 3, 5, 4)]:
            assert torch.equal(g(torch.ones(shape)), torch.full(shape, 2.0))
    # (4,4) reused; (6,4) evicts the least recently used (5,4), which is captured again at the end
    assert captured == [(1, 3, 4, 4), (1, 3, 5, 4), (1, 3, 6, 4), (1, 3, 5, 4)]
    assert len(g._graphs) == 2
    g.reset()
    assert not g._graphs
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphed(model, max_graphs=0)
