"""The results log: every benchmark row as one line of ``benchmarks/results/history.jsonl``, and the latest table
per machine regenerated from it (``latest-<machine>.md`` and ``.png``).

Each row is flat: when and where (``date``, ``machine``, ``device``, ``cpu``, ``gpu``, ``threads``, ``torch``),
what code and command (``commit``, ``command``), what was timed (``section``: op / subop / inference / training;
``case``: the op or model; ``shape``; ``mode``: fwd, bwd, fwd+bwd, or the model's LR size; ``dtype``;
``provider``: eager, compile, fused[cpu], folded[cuda], ...), and the numbers (``median_ms``, ``q1_ms``,
``q3_ms``, ``speedup_vs_eager``: eager median / this median in the same run, ``paired``: median of the
interleaved per-call ratios t_eager / t_this with ``paired_q1`` / ``paired_q3``; model rows with peers also
``paired_vs_best_peer`` and, for reduced-precision rows, ``psnr_cost_dB`` on Set5), plus the conditions that move
CPU timings (``omp_wait_policy``, ``malloc``).

    python -m benchmarks.history [--machine TAG]     # regenerate latest-*.md/.png from the log
    python -m benchmarks.history --merge FILE        # append another log's rows (e.g. a lent GPU's $OUT), then
                                                     # regenerate
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections import OrderedDict

from .harness import machine_tag

__all__ = ["RESULTS_DIR", "LOG_NAME", "rows_of", "append", "read", "latest", "to_markdown", "plot", "regenerate",
           "record", "git_commit"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LOG_NAME = "history.jsonl"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """The checkout's commit (short hash), '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        h = subprocess.run(["git", "-C", _ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", _ROOT, "status", "--porcelain", "--untracked-files=no", "--", "csrc",
                                "eimn_kernels", "eimn", "benchmarks"], capture_output=True, text=True).stdout.strip()
        return h + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _f(x, nd=4):
    return None if x is None else round(float(x), nd)


def rows_of(results: dict, command: str, commit: str | None = None) -> list[dict]:
    """The flat log rows of one run's ``results`` (benchmarks.report's dict: machine, ops, model, malloc)."""
    m = results.get("machine", {})
    base = {"date": m.get("date_utc"), "machine": machine_tag(m), "device": m.get("device"),
            "cpu": m.get("cpu_model"), "gpu": m.get("gpu"), "threads": m.get("torch_threads"),
            "torch": m.get("torch"), "commit": commit or git_commit(), "command": command,
            "malloc": results.get("malloc")}
    out = []
    for r in results.get("ops") or []:
        if "median_ms" not in r or "error" in r:
            continue
        out.append({**base, "section": r.get("group", "op"), "case": r["op"], "shape": r["shape"],
                    "mode": r["mode"], "dtype": r.get("dtype", "fp32"), "provider": r["variant"],
                    **_numbers(r), "omp_wait_policy": r.get("omp_wait_policy", m.get("omp_wait_policy"))})
    for r in results.get("model") or []:
        if "median_ms" not in r or "error" in r:
            continue
        case = r["model"] if r.get("scale") in (None, 1) else f"{r['model']}_x{r['scale']}"
        out.append({**base, "section": r.get("group", "inference"), "case": case,
                    "shape": f"LR {r['lr']}" + (f" batch {r['batch']}" if r.get("batch") else ""),
                    "mode": "train step" if r.get("group") == "training" else "inference",
                    "dtype": r.get("precision", "fp32"), "provider": r["variant"], **_numbers(r),
                    "paired_vs_best_peer": _f(r.get("paired_vs_best_peer")), "psnr_cost_dB": _f(r.get("psnr_cost_dB")),
                    "omp_wait_policy": m.get("omp_wait_policy")})
    return out


def _numbers(r: dict) -> dict:
    return {"median_ms": _f(r["median_ms"]), "q1_ms": _f(r.get("q1_ms")), "q3_ms": _f(r.get("q3_ms")),
            "speedup_vs_eager": _f(r.get("speedup_vs_eager")), "paired": _f(r.get("paired_speedup", r.get("paired_vs_eager"))),
            "paired_q1": _f(r.get("paired_q1")), "paired_q3": _f(r.get("paired_q3"))}


def append(rows: list[dict], results_dir: str = RESULTS_DIR) -> str:
    """Append ``rows`` to the log; returns its path."""
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, LOG_NAME)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False) + "\n")
    return path


def read(results_dir: str = RESULTS_DIR) -> list[dict]:
    """Every row of the log, in the order written."""
    path = os.path.join(results_dir, LOG_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _group(r: dict) -> tuple:
    return (r["section"], r["case"], r["shape"], r["mode"], r["dtype"])


def _run(r: dict) -> tuple:
    return (r["date"], r["command"])


def latest(rows: list[dict], machine: str) -> list[dict]:
    """The latest rows of ``machine``: for every group (section, case, shape, mode, dtype) all the providers of
    the newest run that timed it, so that the ratios of one group always come from one run."""
    newest: dict = {}
    for r in rows:
        if r["machine"] != machine:
            continue
        g = _group(r)
        if g not in newest or _run(r) > newest[g]:
            newest[g] = _run(r)
    return [r for r in rows if r["machine"] == machine and _run(r) == newest[_group(r)]]


def _x(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _db(v) -> str:
    return "" if v is None else f"{v:.4f} dB"


def to_markdown(rows: list[dict], machine: str) -> str:
    """The latest table of ``machine`` (rows from :func:`latest`) as markdown."""
    if not rows:
        return f"# Latest results: {machine}\n\nNo rows in the log.\n"
    r0 = max(rows, key=lambda r: r["date"])
    where = r0.get("gpu") or f"{r0.get('cpu')}, {r0.get('threads')} threads"
    lines = [f"# Latest results: {machine}", "",
             f"{where}; torch {r0.get('torch')}. Generated from `{LOG_NAME}` by `python -m benchmarks.history`: "
             "for every case the newest run that timed it. *vs eager*: eager's median / this median in the same "
             "run; *paired*: median (quartiles) of t_eager / t_this over interleaved single calls (model rows: "
             "also over the fastest ONNX Runtime / OpenVINO row, *vs peer*); *PSNR cost*: Set5 PSNR lost by a "
             "reduced-precision row with the official weights.", "",
             "| section | case | shape | mode | dtype | provider | median ms | vs eager | paired (IQR) | vs peer | "
             "PSNR cost | date | commit | command |", "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in sorted(rows, key=lambda r: (_group(r), r["provider"] != "eager", r["provider"])):
        paired = "" if r.get("paired") is None else (f"{r['paired']:.2f}x ({r['paired_q1']:.2f}-{r['paired_q3']:.2f})"
                                                     if r.get("paired_q1") is not None else f"{r['paired']:.2f}x")
        lines.append(f"| {r['section']} | {r['case']} | {r['shape']} | {r['mode']} | {r['dtype']} | {r['provider']} "
                     f"| {r['median_ms']:.2f} | {_x(r.get('speedup_vs_eager'))} | {paired} | {_x(r.get('paired_vs_best_peer'))} "
                     f"| {_db(r.get('psnr_cost_dB'))} | {r['date'][:16]} "
                     f"| {r.get('commit', '')} | `{r.get('command', '')}` |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], machine: str, path: str) -> str | None:
    """Bars of the speed-up over eager (paired where measured) of every non-eager provider, layers and models (the
    sub-op rows stay in the table); None without rows."""
    rows = [r for r in rows if r["section"] != "subop" and r["provider"] != "eager"
            and (r.get("paired") or r.get("speedup_vs_eager"))]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    cases = list(OrderedDict.fromkeys(f"{r['case']} {r['shape']} {r['mode']} {r['dtype']}" for r in rows))
    provs = list(OrderedDict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / len(provs)
    fig, ax = plt.subplots(figsize=(min(24, max(8, 0.5 * len(cases) + 3)), 6))
    xs = np.arange(len(cases))
    for i, p in enumerate(provs):
        vals = []
        for c in cases:
            r = next((r for r in rows if r["provider"] == p and f"{r['case']} {r['shape']} {r['mode']} {r['dtype']}" == c),
                     None)
            vals.append((r.get("paired") or r.get("speedup_vs_eager")) if r else 0.0)
        ax.bar(xs + (i - (len(provs) - 1) / 2) * width, vals, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed-up over eager (paired where measured)")
    ax.set_title(f"eimn-kernels, latest: {machine}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _value(r: dict) -> float | None:
    return r.get("paired") if r.get("paired") is not None else r.get("speedup_vs_eager")


def _ratio(r: dict | None, named: bool = False) -> str:
    v = None if r is None else _value(r)
    if v is None:
        return ""
    name = r["provider"].split("[")[-1].rstrip("]") if named and "[" in r["provider"] else ""
    return f"{v:.2f}x" + (f" ({name})" if name else "")


def headline(rows: list[dict], machine: str) -> str:
    """The README's compact table of ``machine``'s latest rows: per layer and shape the best fused backend's and
    torch.compile's speed-up over eager (paired where measured), forward and forward + backward, then per model
    the best folded (else fused) inference. The backend is named where the machine has several."""
    lat = [r for r in latest(rows, machine) if r["section"] in ("op", "inference")]
    named = len({r["provider"] for r in lat if r["provider"].startswith(("fused[", "folded["))}) > 2
    lines = ["| layer or model, input | fused fwd (model: folded) | fused fwd+bwd | torch.compile fwd | eager fwd ms |",
             "|---|---:|---:|---:|---:|"]
    keys = list(OrderedDict.fromkeys((r["section"], r["case"], r["shape"], r["dtype"]) for r in lat))
    for sec, case, shape, dtype in sorted(keys, key=lambda k: (k[0] != "op", k[1], k[2], k[3])):
        grp = [r for r in lat if (r["section"], r["case"], r["shape"], r["dtype"]) == (sec, case, shape, dtype)]

        def best(mode, prefix, grp=grp):
            cands = [r for r in grp if r["mode"] == mode and r["provider"].startswith(prefix) and _value(r)]
            return max(cands, key=_value, default=None)
        fwd = "fwd" if sec == "op" else "inference"
        kind = "fused[" if sec == "op" or best(fwd, "folded[") is None else "folded["
        eager = best(fwd, "eager")
        name = case.upper() if sec == "op" else case
        ms = None if eager is None else eager["median_ms"]
        eager_ms = "" if ms is None else (f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}")
        dt = "" if dtype == "fp32" else " " + dtype
        lines.append(f"| {name} {shape}{dt} | {_ratio(best(fwd, kind), named)} "
                     f"| {_ratio(best('fwd+bwd', kind), named)} | {_ratio(best(fwd, 'compile'))} | {eager_ms} |")
    return "\n".join(lines)


def regenerate(machine: str | None = None, results_dir: str = RESULTS_DIR) -> list[str]:
    """Rewrite latest-<machine>.md (and .png) from the log, for ``machine`` or every machine in it; returns the
    paths written."""
    rows = read(results_dir)
    machines = [machine] if machine else list(OrderedDict.fromkeys(r["machine"] for r in rows))
    written = []
    for m in machines:
        lat = latest(rows, m)
        md = os.path.join(results_dir, f"latest-{m}.md")
        png = plot(lat, m, os.path.join(results_dir, f"latest-{m}.png"))
        text = to_markdown(lat, m)
        if png:
            text += f"\n![speed-ups](latest-{m}.png)\n"
        with open(md, "w") as f:
            f.write(text)
        written += [md] + ([png] if png else [])
    return written


def record(results: dict, command: str, results_dir: str = RESULTS_DIR) -> list[str]:
    """Append a run's rows to the log and regenerate its machine's latest table; returns the paths written."""
    rows = rows_of(results, command)
    if not rows:
        return []
    log = append(rows, results_dir)
    return [log] + regenerate(rows[0]["machine"], results_dir)


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machine", help="only this machine tag (default: every machine in the log)")
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    ap.add_argument("--merge", metavar="FILE", help="append the rows of this log (not already in ours) first")
    ap.add_argument("--headline", metavar="TAG", help="print the README's compact table of this machine and stop")
    a = ap.parse_args(argv)
    if a.headline:
        print(headline(read(a.results_dir), a.headline))
        return []
    if a.merge:
        have = {json.dumps(r, sort_keys=True) for r in read(a.results_dir)}
        with open(a.merge) as f:
            new = [r for r in (json.loads(line) for line in f if line.strip()) if json.dumps(r, sort_keys=True) not in have]
        append(new, a.results_dir)
        print(f"merged {len(new)} rows from {a.merge}")
    paths = regenerate(a.machine, a.results_dir)
    for p in paths:
        print("wrote", p)
    return paths


if __name__ == "__main__":
    main()
