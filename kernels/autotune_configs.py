"""Autotuning candidates for the LoRA kernels: Hopper (H100/H200) tiles, one small tile when interpreting.

Tile names follow the kernel that uses them. In the forward GEMM ``BLOCK_M`` x ``BLOCK_N`` is the output
tile (tokens x output features) and ``BLOCK_K`` the step over input features. In the backward GEMM the
output tile is ``BLOCK_M`` x ``BLOCK_K`` (tokens x input features) and ``BLOCK_N`` the step over output
features. The Hopper picks follow the Triton matmul tutorials and LoRAFusion's H100 tuning (128x256x64,
8 warps, 3-4 stages first); smaller tiles stay in the list for skinny projections and pre-Hopper GPUs
(configs that do not fit shared memory are discarded by the autotuner). fp32 inputs, which multiply
on CUDA cores, get their own small tiles. ``python -m peftlab.kernels.compile_check`` shows what each
config needs (shared memory, spills) on sm_90 without a GPU.

The CPU interpreter cannot benchmark (it has no driver), so under ``TRITON_INTERPRET=1`` every kernel
is pruned to one small tile, small enough that the tests' tiny shapes still span several tiles.
"""

from __future__ import annotations

from typing import Any

import torch
import triton

from .triton_support import is_interpreting


def _gemm_config(block_m: int, block_n: int, block_k: int, stages: int, warps: int) -> triton.Config:
    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8}
    return triton.Config(meta, num_stages=stages, num_warps=warps)


INTERPRET_GEMM_CONFIG = triton.Config(
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}, num_stages=1, num_warps=1
)
INTERPRET_SHRINK_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_K": 16}, num_stages=1, num_warps=1)

# Output tile BLOCK_M x BLOCK_N, reduction step BLOCK_K. Kept short: every new problem size compiles
# and times each candidate once (the GPU session can widen the list when tuning).
FORWARD_CONFIGS = [
    _gemm_config(128, 256, 64, stages=3, warps=8),
    _gemm_config(128, 256, 64, stages=4, warps=8),
    _gemm_config(128, 128, 64, stages=4, warps=8),
    _gemm_config(128, 128, 64, stages=4, warps=4),
    _gemm_config(64, 128, 64, stages=4, warps=4),
    INTERPRET_GEMM_CONFIG,
]

# Output tile BLOCK_M x BLOCK_K, reduction step BLOCK_N.
BACKWARD_CONFIGS = [
    _gemm_config(128, 64, 256, stages=3, warps=8),
    _gemm_config(128, 64, 256, stages=4, warps=8),
    _gemm_config(128, 64, 128, stages=4, warps=8),
    _gemm_config(128, 64, 128, stages=4, warps=4),
    _gemm_config(64, 64, 128, stages=4, warps=4),
    INTERPRET_GEMM_CONFIG,
]

# fp32 inputs multiply on CUDA cores (exact "ieee" products): small tiles that fit without tensor cores.
FP32_FORWARD_CONFIGS = [
    _gemm_config(64, 128, 64, stages=3, warps=4),
    _gemm_config(64, 64, 32, stages=3, warps=4),
]
FP32_BACKWARD_CONFIGS = [
    _gemm_config(64, 64, 128, stages=3, warps=4),
    _gemm_config(64, 32, 64, stages=3, warps=4),
]
FORWARD_CONFIGS += FP32_FORWARD_CONFIGS
BACKWARD_CONFIGS += FP32_BACKWARD_CONFIGS

# S = dropout(X)·Aᵀ is bandwidth-bound: rows per program x step over input features.
SHRINK_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_K": 256}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 128}, num_stages=3, num_warps=8),
    INTERPRET_SHRINK_CONFIG,
]

_INTERPRET_CONFIGS = (INTERPRET_GEMM_CONFIG, INTERPRET_SHRINK_CONFIG)
_FP32_ONLY_CONFIGS = (*FP32_FORWARD_CONFIGS, *FP32_BACKWARD_CONFIGS)


def _is_one_of(config: triton.Config, group: tuple[triton.Config, ...]) -> bool:
    return any(config is member for member in group)


def prune_for_platform(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list:
    """Keep only the interpreter tile under ``TRITON_INTERPRET=1``; otherwise drop it.

    On the GPU, fp32 inputs get the fp32 tiles and 16-bit inputs the tensor-core tiles. Tiles far
    larger than the problem (a 256-row tile for 40 tokens) are dropped too, which keeps autotuning
    short for small batches; at least one config always survives.
    """
    if is_interpreting():
        return [config for config in configs if _is_one_of(config, _INTERPRET_CONFIGS)]
    fp32 = getattr(named_args.get("x_ptr"), "dtype", None) == torch.float32
    gpu_configs = [
        config
        for config in configs
        if not _is_one_of(config, _INTERPRET_CONFIGS) and (fp32 or not _is_one_of(config, _FP32_ONLY_CONFIGS))
    ]
    if fp32 and any(_is_one_of(config, _FP32_ONLY_CONFIGS) for config in gpu_configs):
        gpu_configs = [config for config in gpu_configs if _is_one_of(config, _FP32_ONLY_CONFIGS)]
    rows = named_args.get("M_BUCKET", 1 << 30)
    fitting = [config for config in gpu_configs if config.kwargs["BLOCK_M"] <= max(64, rows)]
    return fitting or gpu_configs[-1:]
