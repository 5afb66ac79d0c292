"""Program-id to output-tile mapping shared by the LoRA GEMM kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_pid_rows, num_pid_cols, GROUP_M: tl.constexpr):
    """Map a linear program id to ``(tile_row, tile_col)``, sweeping ``GROUP_M`` row blocks per column.

    Neighbouring programs then share row and column blocks, so operands are served from L2
    (the grouped ordering of Triton's matmul tutorial).
    """
    programs_per_group = GROUP_M * num_pid_cols
    group = pid // programs_per_group
    first_row = group * GROUP_M
    group_rows = tl.minimum(num_pid_rows - first_row, GROUP_M)
    tile_row = first_row + (pid % programs_per_group) % group_rows
    tile_col = (pid % programs_per_group) // group_rows
    return tile_row, tile_col
