"""Writers of a benchmark run: JSON (everything), a markdown report and a PNG of speed-ups.

A run's ``results`` dict holds ``machine`` (harness.machine_info), ``ceilings``, ``complexity``,
``ops`` (op and sub-op rows), ``model`` (inference and training rows), ``notes`` and ``wall_s``;
every section is optional.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys

from .harness import machine_tag

__all__ = ["result_paths", "write_json", "print_result", "add_record_args", "record_run", "to_markdown",
           "write_markdown", "plot_speedups", "write_all"]


def result_paths(results: dict, out_dir: str) -> dict[str, str]:
    """{'json', 'md', 'png'}: <out_dir>/<machine>-<date>.<ext>, date in UTC (YYYYmmdd-HHMM)."""
    m = results.get("machine", {})
    date = m.get("date_utc")
    try:
        stamp = _dt.datetime.strptime(date, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d-%H%M")
    except (TypeError, ValueError):
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M")
    base = os.path.join(out_dir, f"{machine_tag(m)}-{stamp}")
    return {"json": base + ".json", "md": base + ".md", "png": base + ".png"}


def write_json(results: dict, path: str) -> str:
    """Write ``results`` as indented JSON (non-JSON values as strings)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return path


def print_result(results: dict, table: str, json_path: str | None = None) -> dict:
    """End of a benchmark command line: the table and the notes on stdout, then ``results`` as JSON to
    ``json_path`` when given. Returns ``results``."""
    print(table)
    for n in results.get("notes") or []:
        print("note:", n)
    if json_path:
        print(f"wrote {write_json(results, json_path)}")
    return results


def add_record_args(ap) -> None:
    """The results-log options of a benchmark command line (see benchmarks.history)."""
    from .history import RESULTS_DIR
    ap.add_argument("--results-dir", default=RESULTS_DIR,
                    help=f"where the results log and the latest tables are (default {RESULTS_DIR})")
    ap.add_argument("--no-record", action="store_true", help="do not append this run's rows to the results log")


def record_run(results: dict, args, module: str, argv) -> list[str]:
    """Append ``results``' rows to the log of ``args.results_dir`` (unless ``args.no_record``) with the command
    ``python -m <module> <argv>`` and regenerate the machine's latest table; prints and returns the paths."""
    if args.no_record:
        return []
    from .history import record
    cmd = " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])
    paths = record(results, cmd, args.results_dir)
    for p in paths:
        print(f"recorded: {p}")
    return paths


def _machine_md(m: dict, c: dict | None) -> list[str]:
    lines = ["## Machine", "",
             f"- date (UTC): {m.get('date_utc')}; host {m.get('hostname')}; {m.get('platform')}",
             f"- CPU: {m.get('cpu_model')} ({m.get('cpu_count')} logical CPUs), torch threads {m.get('torch_threads')}"
             f", load average {m.get('loadavg')}, OMP_WAIT_POLICY {m.get('omp_wait_policy')}",
             f"- GPU: {m.get('gpu') or 'none'}; CUDA {m.get('cuda')}"
             + (f"; eager TF32: {m['tf32']}" if m.get("tf32") else ""),
             f"- torch {m.get('torch')}, triton {m.get('triton')}, python {m.get('python')}, "
             f"eimn_kernels {m.get('eimn_kernels')}; backends on {m.get('device')}: {m.get('backends')}; "
             f"extension: {m.get('extension')}"]
    if c:
        lines.append(f"- measured ceilings: copy {c['copy_GBps']:.1f} GB/s (read + write, {c['copy_MB']} MB), "
                     f"sgemm {c['sgemm_GFLOPs']:.1f} GFLOP/s (n={c['sgemm_n']})"
                     + (f", hgemm {c['hgemm_GFLOPs']:.0f} GFLOP/s" if c.get("hgemm_GFLOPs") else ""))
    lines.append("")
    return lines


def to_markdown(results: dict) -> str:
    """The markdown report of a run."""
    from .complexity import format_table as complexity_md
    from .model import format_rows as model_md
    from .ops import format_rows as ops_md
    m = results.get("machine", {})
    title = f"# eimn-kernels benchmarks: {machine_tag(m)}"
    lines = [title, ""]
    if results.get("quick"):
        lines += ["Quick run (`--quick`): fewer shapes and repeats; numbers are indicative.", ""]
    lines += _machine_md(m, results.get("ceilings"))
    if results.get("complexity"):
        lines += ["## Complexity (1280x720 HR output; conv MACs + 2 per BatchNorm element, as the paper)", "",
                  complexity_md(results["complexity"]), ""]
    ops = results.get("ops") or []
    for group, title in (("op", "Ops (fused vs eager reference vs torch.compile)"),
                         ("subop", "Sub-ops (fused vs eimn_kernels.reference)")):
        rows = [r for r in ops if r.get("group") == group]
        if rows:
            lines += [f"## {title}", "",
                      "Times are medians; speed-up = eager median / variant median in the same run; paired "
                      "speed-up = median (and quartiles) of t_eager / t_variant over interleaved single calls, which "
                      "both see the same machine state (the steadier figure on a shared machine). Roofline: conv "
                      "FLOPs (2 x MACs, elementwise work not counted) and minimum bytes (inputs, parameters, outputs "
                      "once) against the measured copy bandwidth and sgemm rate.", "", ops_md(rows), ""]
    if results.get("model"):
        lines += ["## Whole model", "", model_md(results["model"]), ""]
    if results.get("plot"):
        lines += [f"![speed-ups]({os.path.basename(results['plot'])})", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("wall_s") is not None:
        lines.append(f"Total wall time: {results['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def write_markdown(results: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(to_markdown(results))
    return path


def _bars(ax, rows: list[dict], label_fn, title: str) -> None:
    import numpy as np
    rows = [r for r in rows if r.get("speedup_vs_eager") is not None and r.get("variant") != "eager"]
    if not rows:
        ax.text(0.5, 0.5, "no fused or compiled variant timed here", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xticks([])
        return
    cases, variants = [], []
    for r in rows:
        c = label_fn(r)
        if c not in cases:
            cases.append(c)
        if r["variant"] not in variants:
            variants.append(r["variant"])
    width = 0.8 / len(variants)
    xs = np.arange(len(cases))
    for i, v in enumerate(variants):
        vals = [next((r["speedup_vs_eager"] for r in rows if r["variant"] == v and label_fn(r) == c), 0.0)
                for c in cases]
        ax.bar(xs + (i - (len(variants) - 1) / 2) * width, vals, width, label=v)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed-up vs eager (x)")
    ax.set_title(title)
    ax.legend(fontsize=7)


def plot_speedups(results: dict, path: str) -> str:
    """PNG with speed-up bars vs eager: ops, sub-ops and whole model (one panel each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ops = results.get("ops") or []
    panels = [("Ops", [r for r in ops if r.get("group") == "op"],
               lambda r: f"{r['op']} {r['shape']} {r['mode']}"),
              ("Sub-ops", [r for r in ops if r.get("group") == "subop"],
               lambda r: f"{r['op']} {r['shape']} {r['mode']}"),
              ("Model", results.get("model") or [],
               lambda r: f"{r['model']} x{r['scale']} {r['precision']}" + (" train" if r["group"] == "training"
                                                                           else ""))]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    for ax, (title, rows, lab) in zip(axes, panels):
        _bars(ax, rows, lab, title)
    m = results.get("machine", {})
    fig.suptitle(f"eimn-kernels speed-ups: {machine_tag(m)} ({m.get('date_utc', '')})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(results: dict, out_dir: str) -> dict[str, str]:
    """Write JSON, markdown and PNG of ``results`` under ``out_dir``; returns their paths."""
    paths = result_paths(results, out_dir)
    results["plot"] = plot_speedups(results, paths["png"])
    write_markdown(results, paths["md"])
    write_json(results, paths["json"])
    return paths
