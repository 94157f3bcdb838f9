"""Block sizes of the SADFFM Triton kernels, in one place.

All are powers of two and >= 16 (tl.dot needs every dimension >= 16; smaller channel
counts are padded with masks). ``MAX_SPLITS`` bounds the number of programs of the
deterministic weight-gradient reductions (each writes one partial; partials are summed
in a fixed order afterwards).
"""
GEMM_BO = 64     # 1x1 conv: output channels per program
GEMM_BC = 32     # 1x1 conv: input-channel step of the K loop
GEMM_BP = 64     # 1x1 conv: pixels per program
DW_BH = 16       # depthwise + gate: hidden channels per program
DW_BP = 64       # depthwise + gate forward, transposed depthwise: pixels per program
DW_BWD_BP = 32   # depthwise + gate backward (more live tensors): pixels per step
WG_BM = 64       # weight-grad GEMM: rows (output channels) per program
WG_BK = 64       # weight-grad GEMM: columns (input channels) per program
WG_BP = 64       # weight-grad GEMM: pixel step
DFFM_BP = 64     # dffm passes: pixels per program (all C channels in one block)
DFFM_BH = 32     # dffm pass 1: hidden-channel step of the K loop
MAX_SPLITS = 132  # deterministic reductions: at most this many partials (one per program)
# Warps per program. Chosen so no kernel spills registers on sm_90 (checked with ptxas / cuobjdump
# --dump-resource-usage): the depthwise and dffm kernels keep many [channels, pixels] tiles live.
GEMM_WARPS = 4
WG_WARPS = 8
DW_WARPS = 8
DFFM_WARPS = 8
