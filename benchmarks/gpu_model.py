"""The GPU inference path of one folded EIMN block, kernel by kernel, and its roofline floors on an H100.

Implemented by the Triton NHWC block kernels (eimn_kernels/nhwc.py, triton_kernels/block_*.py; what
``optimize_for_inference`` runs on a CUDA device); the CUDA backend does not have it yet. NHWC activations, every
1x1 a tensor-core GEMM with its epilogue fused, the DFFM statistics in the epilogue of the GEMM that makes y:

  1 molrcm_region  x (2-pixel halo) -> q = GELU(Wq x + bq) on the haloed tile (scratch, L2) -> r = DW5(q) + b0
                                                                              (GEMM C x C on the haloed tile)
  2 molrcm_mix     r (halo 4 / 9 through L1/L2), x -> y = [DW5d2(r1), r2, DW7d3(r3)] in registers,
                   a = x + Wo (SiLU(Wf y + bf) * (Wv x + bv)) + bo               (3 GEMMs C x C)
  3 sadffm_body    a (1-pixel halo) -> per chunk of hidden channels: U = W_in a + b_in on the haloed tile
                   (scratch, L2) -> DW3x3 -> h = GELU(t1) t2 -> y += W_out h; epilogue: DFFM LayerNorm z,
                   per-tile sums of z, a_loc = w_se . GELU(W_lr z + b_lr)       (GEMMs 2h x C, C x h, R x C)
  4 dffm_global    per image: tile sums in a fixed order -> g, c = sigmoid(W_ce g + b_ce), k
  5 dffm_apply     a, y, a_loc -> out = a + ls2 * y * c * sigmoid(a_loc + k), then the model's LayerNorm
                   after the block -> the next block's input

Per block: 5 launches, 10 activation-sized HBM passes (one pass = N x H x W x C elements; 2 compulsory: the
block's input and output). Halo reads are counted once (neighbouring tiles' halos hit L2); the haloed GEMMs'
recomputed rows (block_config's tiles: padded halo rows / output pixels) are counted as executed FLOPs.

    python -m benchmarks.gpu_model [--shape 1x64x180x320] [--dtype fp32|fp16|bf16] [--blocks 16]

prints each kernel's bytes, useful and executed GEMM FLOPs and floors (memory, tensor-core compute on the executed
FLOPs) and the totals. H100 SXM figures: HBM3 3.35 TB/s; dense tensor-core 494 TFLOP/s TF32 (3xTF32: a third),
989 fp16/bf16.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["H100", "Kernel", "block_plan", "totals", "format_plan", "main"]

H100 = {"hbm_Bps": 3.35e12, "tf32_flops": 494e12, "half_flops": 989e12, "launch_s": 2.5e-6}
HID_RATIO, R_RATIO = 2.66, 4  # EIMN: hidden = int(2.66 C), DFFM reduce C // 4
DW_TAPS_MOLRCM = (25, (24, 25), (32, 49))  # region 5x5 on C; spatial_1 5x5 on c1 = 24; spatial_2 7x7 on c3 = 32


@dataclass
class Kernel:
    """One kernel of the plan: HBM bytes read / written, tensor-core (GEMM) and other FLOPs, activation passes."""
    name: str
    read_B: float
    write_B: float
    gemm_flops: float
    other_flops: float
    passes: float  # activation-sized (N x H x W x C) HBM passes
    recompute_flops: float = 0.0  # GEMM FLOPs of haloed rows beyond the useful ones

    def floors(self, dtype: str, hw: dict = H100) -> dict:
        """Memory and compute floors in seconds (compute on the executed GEMM FLOPs: TF32 for fp32 with 3xTF32 =
        3 products, else half)."""
        rate = hw["tf32_flops"] / 3 if dtype == "fp32" else hw["half_flops"]
        return {"memory_s": (self.read_B + self.write_B) / hw["hbm_Bps"],
                "compute_s": (self.gemm_flops + self.recompute_flops) / rate}


def _halo_factor(kernel: str, dtype: str) -> float:
    """Executed / useful rows of a haloed GEMM: block_config's padded halo rows per output pixel."""
    from eimn_kernels.triton_kernels import block_config as cfg
    from eimn_kernels.triton_kernels.block_common import halo_rows
    dc = "fp32" if dtype == "fp32" else "half"
    th, tw, halo = {"molrcm_region": (*cfg.REGION[dc][:2], 2), "sadffm_body": (*cfg.BODY[dc][:2], 1)}[kernel]
    return halo_rows(th, tw, halo) / (th * tw)


def block_plan(N: int, C: int, H: int, W: int, dtype: str = "fp32") -> list[Kernel]:
    """The kernels of one folded EIMN block forward on an (N, C, H, W) input, as implemented."""
    es = 4 if dtype == "fp32" else 2
    P = N * H * W
    act = P * C * es                  # one activation pass
    hid, R = int(C * HID_RATIO), max(1, C // R_RATIO)
    g = lambda m, k: 2.0 * m * k * P  # noqa: E731  GEMM FLOPs over every pixel
    dw = 2.0 * P * (sum(c * t for c, t in DW_TAPS_MOLRCM[1:]) * C / 64)
    fr, fb = _halo_factor("molrcm_region", dtype), _halo_factor("sadffm_body", dtype)
    return [
        Kernel("molrcm_region", act, act, g(C, C), 2.0 * P * DW_TAPS_MOLRCM[0] * C + 8.0 * P * C, 2,
               (fr - 1) * g(C, C)),
        Kernel("molrcm_mix", 2 * act, act, 3 * g(C, C), dw + 12.0 * P * C, 3),
        Kernel("sadffm_body", act, act + P * 4, g(2 * hid, C) + g(C, hid) + g(R, C),
               2.0 * 9 * 2 * hid * P + 20.0 * P * hid + 10.0 * P * C, 2 + 1 / C, (fb - 1) * g(2 * hid, C)),
        Kernel("dffm_global", N * C * 64 * 4, N * (C + 1) * 4, 0.0, 4.0 * N * C * R, 0),
        Kernel("dffm_apply", 2 * act + P * 4, act, 0.0, 15.0 * P * C, 3 + 1 / C),
    ]


def totals(plan: list[Kernel], dtype: str) -> dict:
    """Launches, passes, bytes, FLOPs and the summed floors of ``plan``."""
    fl = [k.floors(dtype) for k in plan]
    return {"launches": len(plan), "passes": sum(k.passes for k in plan),
            "bytes": sum(k.read_B + k.write_B for k in plan), "gemm_flops": sum(k.gemm_flops for k in plan),
            "recompute_flops": sum(k.recompute_flops for k in plan),
            "memory_s": sum(f["memory_s"] for f in fl), "compute_s": sum(f["compute_s"] for f in fl),
            "floor_s": sum(max(f["memory_s"], f["compute_s"]) for f in fl)}


def format_plan(plan: list[Kernel], dtype: str, blocks: int) -> str:
    lines = [f"{'kernel':14s} {'read MB':>8s} {'write MB':>8s} {'GEMM GFLOP':>10s} {'+halo':>7s} {'passes':>6s} "
             f"{'mem us':>7s} {'TC us':>7s}"]
    for k in plan:
        f = k.floors(dtype)
        lines.append(f"{k.name:14s} {k.read_B / 1e6:8.2f} {k.write_B / 1e6:8.2f} {k.gemm_flops / 1e9:10.3f} "
                     f"{k.recompute_flops / 1e9:7.3f} {k.passes:6.2f} {f['memory_s'] * 1e6:7.1f} "
                     f"{f['compute_s'] * 1e6:7.1f}")
    t = totals(plan, dtype)
    lines += [f"per block: {t['launches']} launches, {t['passes']:.2f} activation passes, "
              f"{t['bytes'] / 1e6:.1f} MB, {t['gemm_flops'] / 1e9:.2f} GEMM GFLOP (+{t['recompute_flops'] / 1e9:.2f} "
              f"on halos); floor {t['floor_s'] * 1e6:.1f} us "
              f"(memory {t['memory_s'] * 1e6:.1f} us, tensor cores {t['compute_s'] * 1e6:.1f} us)",
              f"{blocks} blocks: floor {blocks * t['floor_s'] * 1e3:.2f} ms, launches {blocks * t['launches']} "
              f"(~{blocks * t['launches'] * H100['launch_s'] * 1e3:.2f} ms of launch latency without CUDA graphs)"]
    return "\n".join(lines)


def main(argv=None) -> list[Kernel]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1x64x180x320", help="N x C x H x W of a block's input")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--blocks", type=int, default=16, help="blocks in the model (EIMN_L 16, EIMN_A 14)")
    a = ap.parse_args(argv)
    N, C, H, W = (int(v) for v in a.shape.split("x"))
    plan = block_plan(N, C, H, W, a.dtype)
    print(f"one folded EIMN block on the NHWC block kernels, {a.shape} {a.dtype}, H100 floors")
    print(format_plan(plan, a.dtype, a.blocks))
    return plan


if __name__ == "__main__":
    main()
