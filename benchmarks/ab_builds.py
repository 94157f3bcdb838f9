"""Interleaved A/B timing of the CPU kernels of two source trees (git refs or the working tree), in one process.

This machine's speed drifts by up to 2x within minutes, so two builds timed one after the other disagree by more
than most kernel changes gain. Here both builds are compiled with their op namespace renamed (``eimn_C`` ->
``eimn_ab0`` / ``eimn_ab1``), loaded side by side, and every round times one call of each low-level op from A and
from B (alternating which goes first): the median of the per-round ratios t_A / t_B is steady to about 1-2%.

    python -m benchmarks.ab_builds HEAD~1 WORKTREE [--ops gated_dwconv_backward,dffm_out_backward,sadffm_train]
        [--shape 4x64x64x64] [--threads 1] [--rounds 30]

A ref is anything ``git archive`` takes (commit, branch, tag) or ``WORKTREE`` (the checkout's current csrc/).
Builds are cached under build/ab/<name>. Prints one line per op: median t_A / t_B (> 1: B is faster), the
quartiles and each side's fastest call.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

import torch

from .harness import quantiles

__all__ = ["build_variant", "op_calls", "ab_compare", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources(ref: str, dest: str) -> None:
    """csrc/ of ``ref`` (or of the working tree) into ``dest``."""
    if ref == "WORKTREE":
        shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(dest, "csrc"))
        return
    with tempfile.NamedTemporaryFile(suffix=".tar") as tf:
        subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", "-o", tf.name, ref, "csrc"], check=True)
        with tarfile.open(tf.name) as t:
            t.extractall(dest, filter="data")


def build_variant(ref: str, namespace: str, verbose: bool = False, extra_cflags: tuple[str, ...] = ()) -> str:
    """Compile the CPU ops of ``ref`` with the op namespace ``namespace`` (and ``extra_cflags`` after the
    project's flags); returns the loaded library's ns."""
    from torch.utils.cpp_extension import load
    work = tempfile.mkdtemp(prefix="eimn_ab_")
    _sources(ref, work)
    csrc = os.path.join(work, "csrc")
    srcs = sorted([os.path.join(csrc, "eimn_ops.cpp")] +
                  [os.path.join(csrc, "cpu", f) for f in os.listdir(os.path.join(csrc, "cpu")) if f.endswith(".cpp")])
    headers = sorted(os.path.join(d, f) for d in (os.path.join(csrc, "cpu"), os.path.join(csrc, "common"))
                     for f in os.listdir(d) if f.endswith(".h"))
    tv = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    flags = ["-O3", "-std=c++20" if tv >= (2, 14) else "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
             "-ffp-contract=fast", "-fopenmp", "-march=native", "-mprefer-vector-width=512", "-falign-loops=64",
             f"-Deimn_C={namespace}",
             "-w", *extra_cflags]
    # the cache key: sources, headers and every flag (the base flags change with setup.py's)
    digest = hashlib.sha1(b"".join(open(s, "rb").read() for s in srcs + headers) +
                          " ".join(flags).encode()).hexdigest()[:10]
    bdir = os.path.join(ROOT, "build", "ab", f"{namespace}-{digest}")
    os.makedirs(bdir, exist_ok=True)
    load(name=f"{namespace}_{digest}", sources=srcs, extra_cflags=flags, extra_include_paths=[csrc,
         os.path.join(csrc, "common")], extra_ldflags=["-fopenmp"], build_directory=bdir,
         is_python_module=False, verbose=verbose)
    shutil.rmtree(work, ignore_errors=True)
    return namespace


def op_calls(ns: str, shape: tuple[int, int, int, int]) -> dict:
    """name -> zero-argument callable of every low-level CPU op of namespace ``ns`` on EIMN-sized inputs
    (dim C, hidden 170 for C = 64 (int(2.66 C)), reduce C // 4, MOLRCM split of eimn.model); the bfloat16
    inference ops where this CPU has AVX512-BF16."""
    from eimn.model import molrcm_split
    from eimn_kernels import bf16_engine
    o = getattr(torch.ops, ns)
    N, C, H, W = shape
    hid, R = int(C * 2.66), max(1, C // 4)
    c1, c2, c3 = molrcm_split(C)
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=0.1):
        return torch.randn(*s, generator=g) * scale
    x, y, v, gq, gv, gy = (r(N, C, H, W, scale=1.0) for _ in range(6))
    wq, bq, wv, bv, wf, bf, wo, bo = r(C, C, 1, 1), r(C), r(C, C, 1, 1), r(C), r(C, C, 1, 1), r(C), r(C, C, 1, 1), r(C)
    dw = [r(C, 1, 5, 5), r(C), r(c1, 1, 5, 5), r(c1), r(c3, 1, 7, 7), r(c3)]
    gw = [r(2 * hid, C, 1, 1), r(2 * hid), r(2 * hid, 1, 3, 3), r(2 * hid)]
    fw = [r(C, hid, 1, 1), r(C), 1 + r(C), r(C), r(R, C, 1, 1), r(R), r(R, C, 1, 1), r(R), r(C, R, 1, 1), r(C),
          r(1, 2 * R, 1, 1), r(1)]
    mw = [r(4 * C, C, 1, 1), r(4 * C), r(4 * C, 1, 3, 3), r(4 * C), r(C, 4 * C, 1, 1), r(C)]  # VAN's MLP, ratio 4
    tw, tb = r(48, C, 3, 3), r(48)  # the x4 tail conv (3 * 4^2 channels)
    h = r(N, hid, H, W, scale=1.0)
    gh = r(N, hid, H, W, scale=1.0)
    none = torch.empty(0)  # conv1x1_forward's absent gate / residual

    def train(name, grad, tensors, scalars=()):
        """Forward + backward of op ``name`` as autograd runs them on the cpu backend: through the forward's stash
        where the build has the stash ops, else the plain pair. Returns the forward output and the gradients."""
        try:
            out, st = getattr(o, f"{name}_forward_stash")(*tensors, *scalars)
            return out, getattr(o, f"{name}_backward_stash")(grad, *tensors, st, *scalars)
        except (AttributeError, RuntimeError):  # a build without the stash ops
            out = getattr(o, f"{name}_forward")(*tensors, *scalars)
            return out, getattr(o, f"{name}_backward")(grad, *tensors, *scalars)

    def sadffm_train():
        """One SADFFM training step of the CPU kernels: both forwards, both backwards."""
        try:
            hh, st = o.gated_dwconv_forward_stash(x, *gw)
            _, gd = train("dffm_out", gy, (hh, *fw), (1e-6,))
            return o.gated_dwconv_backward_stash(gd[0], x, *gw, st)
        except (AttributeError, RuntimeError):
            hh = o.gated_dwconv_forward(x, *gw)
            _, gd = train("dffm_out", gy, (hh, *fw), (1e-6,))
            return o.gated_dwconv_backward(gd[0], x, *gw)
    calls = {
        "proj_qv_forward": lambda: o.proj_qv_forward(x, wq, bq, wv, bv),
        "proj_qv_backward": lambda: o.proj_qv_backward(gq, gv, x, wq, bq, wv, bv),
        "dw_mix_forward": lambda: o.dw_mix_forward(x, *dw, c1, c2, 1, 2, 3),
        "dw_mix_backward": lambda: o.dw_mix_backward(gy, x, *dw, c1, c2, 1, 2, 3),
        "gate_out_forward": lambda: o.gate_out_forward(y, v, wf, bf, wo, bo),
        "gate_out_backward": lambda: o.gate_out_backward(gy, y, v, wf, bf, wo, bo),
        "gated_dwconv_forward": lambda: o.gated_dwconv_forward(x, *gw),
        "gated_dwconv_backward": lambda: o.gated_dwconv_backward(gh, x, *gw),
        "dffm_out_forward": lambda: o.dffm_out_forward(h, *fw, 1e-6),
        "dffm_out_backward": lambda: o.dffm_out_backward(gy, h, *fw, 1e-6),
        "sadffm_infer_forward": lambda: o.sadffm_infer_forward(x, *gw, *fw, 1e-6),
        # the residual is the layer's input, as in the EIMN block (x + attn(x))
        "molrcm_infer_forward": lambda: o.molrcm_infer_forward(x, wq, bq, wv, bv, *dw, wf, bf, wo, bo, c1, c2, 1, 2, 3,
                                                               False, x),
        "gated_dwconv_train": lambda: train("gated_dwconv", gh, (x, *gw)),
        "dffm_out_train": lambda: train("dffm_out", gy, (h, *fw), (1e-6,)),
        "sadffm_train": sadffm_train,
        "conv1x1_gate_forward": lambda: o.conv1x1_forward(x, wq, bq, y, none, 0),
        "conv1x1_gelu_residual_forward": lambda: o.conv1x1_forward(x, wq, bq, none, y, 1),
        "convmlp_infer_forward": lambda: o.convmlp_infer_forward(x, *mw, True),
        "conv3x3_shuffle_forward": lambda: o.conv3x3_shuffle_forward(x, tw, tb, 4),  # EIMN's x4 tail
        "channel_layer_norm_forward": lambda: o.channel_layer_norm_forward(x, 1 + fw[2], fw[3], 1e-5),
        "channel_layer_norm_backward": lambda: o.channel_layer_norm_backward(gy, x, 1 + fw[2], fw[3], 1e-5),
        "channel_layer_norm_train": lambda: train("channel_layer_norm", gy, (x, 1 + fw[2], fw[3]), (1e-5,)),
    }
    if bf16_engine():  # the bfloat16 inference ops, where this CPU runs them (AVX512-BF16)
        calls["sadffm_infer_bf16_forward"] = lambda: o.sadffm_infer_forward(x, *gw, *fw, 1e-6, True)
        calls["molrcm_infer_bf16_forward"] = lambda: o.molrcm_infer_forward(x, wq, bq, wv, bv, *dw, wf, bf, wo, bo, c1,
                                                                            c2, 1, 2, 3, True, x)
    return calls


def ab_compare(fa, fb, rounds: int) -> dict:
    """Median / quartiles of t_A / t_B over interleaved rounds, and each side's fastest call (s)."""
    fa(), fb()
    ratios, ta, tb = [], [], []
    for i in range(rounds):
        ts = {}
        for name, f in ((("a", fa), ("b", fb)) if i % 2 == 0 else (("b", fb), ("a", fa))):
            t0 = time.perf_counter()
            f()
            ts[name] = time.perf_counter() - t0
        ratios.append(ts["a"] / ts["b"])
        ta.append(ts["a"])
        tb.append(ts["b"])
    q1, med, q3 = quantiles(ratios)
    return {"median": med, "q1": q1, "q3": q3, "min_a": min(ta), "min_b": min(tb), "mean": statistics.fmean(ratios)}


def _flat(o) -> list:
    """The tensors of a (nested) op result, in order."""
    if torch.is_tensor(o):
        return [o]
    return [t for x in (o or ()) for t in _flat(x)] if isinstance(o, (tuple, list)) else []


def ab_diff(fa, fb) -> str:
    """How the results of one call of each build differ: 'bitwise equal' or the largest absolute difference."""
    a, b = _flat(fa()), _flat(fb())
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return "different result structure"
    if all(torch.equal(x, y) for x, y in zip(a, b)):
        return "bitwise equal"
    d = max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))
    return f"max abs diff {d:.3g}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref_a")
    ap.add_argument("ref_b")
    ap.add_argument("--ops", help="comma-separated op names (default: all that both builds have)")
    ap.add_argument("--shape", default="4x64x64x64", help="N x C x H x W (default 4x64x64x64)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the steadiest)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--check", action="store_true", help="also compare the two builds' results (bitwise or max diff)")
    ap.add_argument("--cflags-a", default="", help="extra compiler flags for A (e.g. to A/B a flag on one ref)")
    ap.add_argument("--cflags-b", default="", help="extra compiler flags for B")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    shape = tuple(int(s) for s in a.shape.split("x"))
    calls = []
    for ref, ns, fl in ((a.ref_a, "eimn_ab0", a.cflags_a), (a.ref_b, "eimn_ab1", a.cflags_b)):
        print(f"building {ref} as torch.ops.{ns}{' with ' + fl if fl else ''} ...", flush=True)
        calls.append(op_calls(build_variant(ref, ns, a.verbose, tuple(fl.split())), shape))
    names = a.ops.split(",") if a.ops else list(calls[0])
    print(f"A = {a.ref_a}, B = {a.ref_b}; shape {a.shape}, {a.threads} thread(s), {a.rounds} rounds; "
          "t_A / t_B > 1 means B is faster")
    for name in names:
        try:
            s = ab_compare(calls[0][name], calls[1][name], a.rounds)
        except (RuntimeError, AttributeError) as e:  # an op one of the builds lacks
            print(f"{name:24s} skipped: {str(e).splitlines()[0][:100]}")
            continue
        print(f"{name:24s} t_A/t_B {s['median']:.3f} ({s['q1']:.3f}-{s['q3']:.3f})   "
              f"fastest A {s['min_a'] * 1e3:8.2f} ms  B {s['min_b'] * 1e3:8.2f} ms"
              + (f"   {ab_diff(calls[0][name], calls[1][name])}" if a.check else ""))


if __name__ == "__main__":
    main()
