"""The one timing harness of every benchmark: warm-up, repeats, median and IQR, peak memory, machine info.

* CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` for short calls; calls too long for that (two
  blocks of ``min_samples`` calls over ``min_run_time``) get a bounded number of single timed calls
  (``time.perf_counter``, same thread count) that fits in ``max_time``. Peak memory: the
  process's peak resident set (VmHWM of /proc/self/status) over one call, after resetting it by writing
  ``5`` to /proc/self/clear_refs, minus the resident set before the call (includes allocator caching).
* CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls, all samples kept), else a
  CUDA-event loop. Peak memory: ``torch.cuda.max_memory_allocated`` over one call minus the memory
  allocated before it.
* CPU rows also carry the minor page faults per call (``faults_per_call``): eager PyTorch on CPU allocates its
  large intermediates from the C library's malloc, and whether those come back as fresh (faulting) pages on
  every call depends on the allocator's state; :func:`set_malloc_mode` can pin that state for a whole run.

Every measurement reports median, quartiles and IQR of the per-call times in seconds.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch

__all__ = ["Timing", "time_fn", "paired_speedup", "tensor_list", "max_rel_err", "peak_memory", "measure",
           "machine_info", "machine_tag", "measure_ceilings", "progress", "sync", "quantiles", "faults_per_call",
           "set_malloc_mode", "malloc_mode", "add_malloc_arg", "MALLOC_MODES"]


@dataclass
class Timing:
    """Result of timing one callable. Times in seconds; ``samples`` are per-call times."""
    median_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    min_s: float
    n: int                       # number of samples
    calls_per_sample: int        # calls averaged into each sample (blocked_autorange blocks)
    method: str                  # how it was timed
    peak_mem_bytes: int | None = None
    mem_method: str | None = None
    faults_per_call: float | None = None  # minor page faults per call (CPU)
    samples: list = field(default_factory=list)

    def to_dict(self, with_samples: bool = False) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of ``xs`` (linear interpolation, as numpy's default)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0], s[0], s[0]

    def q(p):
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)
    return q(0.25), q(0.5), q(0.75)


def _timing(samples: list[float], calls: int, method: str) -> Timing:
    q1, med, q3 = quantiles(samples)
    return Timing(med, q1, q3, q3 - q1, min(samples), len(samples), calls, method, samples=list(samples))


def sync(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _time_cpu(fn: Callable, warmup: int, min_run_time: float, min_samples: int, max_time: float,
              threads: int | None) -> Timing:
    threads = threads or torch.get_num_threads()
    with _threads(threads):  # warm-up and timed calls all with ``threads`` threads
        return _time_cpu_n(fn, warmup, min_run_time, min_samples, max_time, threads)


def _time_cpu_n(fn: Callable, warmup: int, min_run_time: float, min_samples: int, max_time: float,
                threads: int) -> Timing:
    from torch.utils.benchmark import Timer
    # Warm-up calls (at least 2 unless too long); the fastest of them estimates the cost of a call
    # (the first may include lazy initialisation).
    est = float("inf")
    for i in range(max(2, warmup)):
        t0 = time.perf_counter()
        fn()
        est = min(est, time.perf_counter() - t0)
        if i + 1 >= warmup and est * (i + 2) > max_time:
            break
    if est * min_samples * 2 > min_run_time:
        # Long call: a bounded number of single timed calls within max_time (at least 2 when affordable).
        # (Timer.timeit would add 2 untimed warm-up calls per sample.)
        n = int(min(min_samples, max(1, max_time // max(est, 1e-9))))
        if n < 2 and est < max_time:
            n = 2
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return _timing(samples, 1, f"single calls (time.perf_counter) x{len(samples)}, {threads} threads")
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    samples, number = [], 1
    while len(samples) < min_samples:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        samples += list(m.times)
        number = m.number_per_run
    return _timing(samples, number, f"torch.utils.benchmark.Timer.blocked_autorange, {threads} threads")


def _time_cuda(fn: Callable, warmup: int, min_run_time: float, min_samples: int, max_time: float) -> Timing:
    for _ in range(max(1, warmup)):
        fn()
    torch.cuda.synchronize()
    try:
        from triton.testing import do_bench
        rep_ms = max(1000 * min_run_time, 1.0)
        samples_ms = do_bench(fn, warmup=max(1, int(100 * min_run_time)), rep=rep_ms, return_mode="all")
        samples = [t / 1000 for t in samples_ms]
        if len(samples) >= min(min_samples, 2):
            return _timing(samples, 1, "triton.testing.do_bench (CUDA events, L2 flushed)")
    except Exception:  # no triton, or an old do_bench without return_mode='all'
        pass
    samples = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t_end = time.perf_counter() + max_time
    while len(samples) < min_samples or (sum(samples) < min_run_time and time.perf_counter() < t_end):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000)
    return _timing(samples, 1, "CUDA events")


def time_fn(fn: Callable, device: torch.device | str = "cpu", *, warmup: int = 2, min_run_time: float = 0.5,
            min_samples: int = 5, max_time: float = 30.0, threads: int | None = None) -> Timing:
    """Time ``fn()`` (no arguments) on ``device``: ``warmup`` calls, then samples for at least
    ``min_run_time`` s and ``min_samples`` samples, except that calls so long that this would exceed
    ``max_time`` s get fewer samples (at least one). CPU timings use ``threads`` torch threads."""
    if torch.device(device).type == "cuda":
        return _time_cuda(fn, warmup, min_run_time, min_samples, max_time)
    return _time_cpu(fn, warmup, min_run_time, min_samples, max_time, threads)


def paired_speedup(ref_fn: Callable, fn: Callable, device: torch.device | str = "cpu", *, rounds: int = 9,
                   max_time: float = 20.0, threads: int | None = None) -> dict:
    """Speed-up of ``fn`` over ``ref_fn`` from interleaved single calls: each round times one call of each
    (alternating which goes first) and gives the ratio t_ref / t_fn; returns the median and quartiles of the
    per-round ratios. Both calls of a round see the same machine state, so this is robust to the slow drifts
    of a shared machine that make two separately timed medians disagree. Stops early after ``max_time`` s
    (at least 3 rounds)."""
    dev = torch.device(device)
    ctx = _threads(threads) if threads and dev.type == "cpu" else contextlib.nullcontext()
    ratios = []
    with ctx:
        ref_fn(), fn()
        sync(dev)
        t_end = time.perf_counter() + max_time
        for i in range(rounds):
            ts = {}
            for which in ((ref_fn, fn) if i % 2 == 0 else (fn, ref_fn)):
                sync(dev)
                t0 = time.perf_counter()
                which()
                sync(dev)
                ts[which] = time.perf_counter() - t0
            ratios.append(ts[ref_fn] / ts[fn])
            if i >= 2 and time.perf_counter() > t_end:
                break
    q1, med, q3 = quantiles(ratios)
    return {"median": med, "q1": q1, "q3": q3, "n": len(ratios)}


def add_paired_ratios(rows: list[dict], fns: dict, best_peer: str | None, *, rounds: int, threads: int | None,
                      device: torch.device | str = "cpu") -> None:
    """Each row's speed-up over eager as a paired, interleaved ratio (``paired_vs_eager``), and the folded rows'
    over ``best_peer`` (``best_peer``, ``paired_vs_best_peer``; skipped where it is None). rows: dicts with a
    ``variant``; fns: variant -> zero-argument callable (rows without one, and all without "eager", are left
    alone)."""
    for r in rows:
        v = r["variant"]
        if v == "eager" or "eager" not in fns or v not in fns:
            continue
        r["paired_vs_eager"] = paired_speedup(fns["eager"], fns[v], device, rounds=rounds, threads=threads)["median"]
        if v.startswith("folded") and best_peer:
            r["best_peer"] = best_peer
            r["paired_vs_best_peer"] = paired_speedup(fns[best_peer], fns[v], device, rounds=rounds,
                                                      threads=threads)["median"]


def tensor_list(o) -> list:
    """A tensor or a tuple/list of tensors as a list."""
    return [o] if torch.is_tensor(o) else list(o)


def max_rel_err(out, want) -> float | None:
    """Max over the tensors of ``out`` / ``want`` (a tensor or a sequence; None entries skipped) of
    max|out - want| / max|want|, in float64; None when there is nothing to compare."""
    errs = []
    for a, b in zip(tensor_list(out), tensor_list(want)):
        if a is None or b is None:
            continue
        scale = b.detach().abs().max().double().clamp_min(1e-30)
        errs.append(((a.detach().double() - b.detach().double()).abs().max() / scale).item())
    return max(errs) if errs else None


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _empty_eimn_cpu_cache() -> None:
    try:
        import eimn_kernels
        eimn_kernels.empty_cpu_cache()
    except ImportError:
        pass


def peak_memory(fn: Callable, device: torch.device | str = "cpu") -> tuple[int | None, str]:
    """(bytes, method): extra memory at the peak of one call of ``fn`` over what was in use before it.
    None when it cannot be measured here."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base, "torch.cuda.max_memory_allocated delta"
    _empty_eimn_cpu_cache()  # and the buffers the eimn CPU kernels keep for reuse
    _malloc_trim()  # hand freed heap pages back, so this call's allocations show up in the RSS again
    base = _proc_status("VmRSS")
    if base is None or not _reset_hwm():
        return None, "unavailable (/proc/self/clear_refs not writable)"
    fn()
    hwm = _proc_status("VmHWM")
    return max(0, hwm - base), "peak RSS delta (malloc_trim, then VmHWM after clear_refs)"


def _minor_faults() -> int | None:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return None


def faults_per_call(fn: Callable, calls: int = 3) -> float | None:
    """Minor page faults (fresh pages the kernel had to map) per call of ``fn``, averaged over ``calls`` calls;
    None where getrusage is unavailable."""
    f0 = _minor_faults()
    if f0 is None:
        return None
    for _ in range(calls):
        fn()
    return (_minor_faults() - f0) / calls


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of glibc's malloc.h
MALLOC_MODES = {
    "default": "glibc malloc as the process has it (large blocks mmap-ed and handed back; the threshold moves "
               "with the process's history)",
    "steady": "glibc mallopt(M_MMAP_THRESHOLD = 32 MiB, M_TRIM_THRESHOLD = 2 GiB): blocks up to 32 MiB come from "
              "the heap and freed heap memory is kept, so repeated eager calls can reuse their pages (the page-fault "
              "column shows whether they do)",
}


def set_malloc_mode(mode: str) -> str:
    """Pin the C library allocator's behaviour for the rest of the process (``MALLOC_MODES``): ``default``
    changes nothing; ``steady`` makes eager PyTorch's repeated large CPU allocations reuse pages instead of
    page-faulting fresh ones on every call (its fastest state). Returns the description to record with the
    results. Raises ValueError for an unknown mode, RuntimeError where ``steady`` cannot be set (no glibc)."""
    global _malloc_mode
    if mode not in MALLOC_MODES:
        raise ValueError(f"unknown malloc mode {mode!r}; choose from {sorted(MALLOC_MODES)}")
    if mode == "steady":
        import ctypes
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError) as e:
            raise RuntimeError(f"malloc mode 'steady' needs glibc's mallopt: {e}") from e
        ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
        if not ok:
            raise RuntimeError("glibc mallopt refused the 'steady' settings")
    if mode != "default":
        _malloc_mode = mode
    return f"malloc {mode}: {MALLOC_MODES[mode]}"


_malloc_mode = "default"


def malloc_mode() -> str:
    """The allocator mode this process was put in by :func:`set_malloc_mode` (``default`` if never)."""
    return _malloc_mode


def add_malloc_arg(ap) -> None:
    """The ``--malloc`` option of the benchmark command lines (see :func:`set_malloc_mode`)."""
    ap.add_argument("--malloc", default="default", choices=tuple(MALLOC_MODES),
                    help="C allocator state for the whole run: default (as is) or steady (eager's large CPU "
                         "allocations reuse pages instead of page-faulting every call: eager at its fastest)")


def measure(fn: Callable, device: torch.device | str = "cpu", *, memory: bool = True, **kw) -> Timing:
    """:func:`time_fn` plus, on CPU, :func:`faults_per_call` over 3 more calls (1 for calls over a second) and,
    when ``memory``, :func:`peak_memory` of one more call."""
    t = time_fn(fn, device, **kw)
    cpu_threads = kw.get("threads") if torch.device(device).type == "cpu" else None
    with _threads(cpu_threads) if cpu_threads else contextlib.nullcontext():
        if torch.device(device).type == "cpu":
            t.faults_per_call = faults_per_call(fn, 1 if t.median_s > 1.0 else 3)
        if memory:
            t.peak_mem_bytes, t.mem_method = peak_memory(fn, device)
    return t


def error_text(e: BaseException) -> str:
    """One-line description of a failed case for a result row: type and first line, at most 200 chars."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def progress(it: Iterable, desc: str, total: int | None = None, disable: bool = False):
    """tqdm progress bar on stderr (plain iteration when tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True, leave=False)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Where and with what a result was measured: CPU model, cores, torch threads, GPU, versions, UTC date."""
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": None,
        "cuda": torch.version.cuda,
        "triton": None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active spin)"),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_GiB"] = round(p.total_memory / 2**30, 1)
        info["gpu_sm_count"] = p.multi_processor_count
        # fp32 eager on CUDA: cuDNN convolutions / cuBLAS matmuls may run in TF32 (torch's defaults: conv yes,
        # matmul no); the fused kernels compute exact fp32, so this says what "eager fp32" meant in a run.
        info["tf32"] = {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                        "matmul": torch.backends.cuda.matmul.allow_tf32}
    try:
        import eimn_kernels as ek
        info["eimn_kernels"] = ek.__version__
        info["backends"] = ek.available_backends(device)
        info["extension"] = "loaded" if ek._ext.extension_loaded() else f"not loaded: {ek._ext.extension_error()}"
        info["extension_cuda"] = ek._ext.built_with_cuda()
        info["cpu_isa"] = ek.cpu_isa()  # the CPU kernels' ISA level (csrc/cpu/cpu_dispatch.cpp)
        info["cpu_bf16_engine"] = ek.bf16_engine()
    except Exception as e:  # pragma: no cover
        info["eimn_kernels"] = f"import failed: {e}"
    return info


def machine_tag(info: dict) -> str:
    """Short file-name-safe machine name: GPU name when timing on CUDA, else the CPU model, plus thread count."""
    name = info.get("gpu") if str(info.get("device", "cpu")).startswith("cuda") and info.get("gpu") else \
        f"{info.get('cpu_model', 'cpu')}-{info.get('torch_threads')}t"
    keep = "".join(c if c.isalnum() or c in "-." else "-" for c in str(name))
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep.strip("-").lower()[:60] or "machine"


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_ceilings(device: torch.device | str = "cpu", quick: bool = False, threads: int | None = None) -> dict:
    """Measured ceilings of ``device``: copy bandwidth (bytes read + written per second, 256 MB tensor copy)
    and fp32 matrix-product rate (sgemm, tf32 off); on CUDA also the fp16 rate. Used by the roofline columns."""
    dev = torch.device(device)
    mb = 64 if quick and dev.type == "cpu" else 256
    src = torch.rand(mb * 2**20 // 4, device=dev)
    dst = torch.empty_like(src)
    min_time = 0.2 if quick else 0.5
    t = time_fn(lambda: dst.copy_(src), dev, warmup=2, min_run_time=min_time, min_samples=3, threads=threads)
    out = {"copy_MB": mb, "copy_GBps": 2 * src.nbytes / t.median_s / 1e9, "copy_method": t.method}
    del src, dst
    n = (1024 if quick else 2048) if dev.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    with _no_tf32():
        t = time_fn(lambda: a @ b, dev, warmup=2, min_run_time=min_time, min_samples=3, threads=threads)
    out.update({"sgemm_n": n, "sgemm_GFLOPs": 2 * n ** 3 / t.median_s / 1e9})
    if dev.type == "cuda":
        a, b = a.half(), b.half()
        t = time_fn(lambda: a @ b, dev, warmup=2, min_run_time=min_time, min_samples=3)
        out["hgemm_GFLOPs"] = 2 * n ** 3 / t.median_s / 1e9
    return out
