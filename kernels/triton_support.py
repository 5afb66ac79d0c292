"""Environment checks and compile-time choices shared by the Triton LoRA kernels.

Triton decides at ``@triton.jit`` decoration time whether a kernel runs on the GPU or in the CPU
interpreter (``TRITON_INTERPRET=1``), so everything here that depends on the interpreter is read
when the kernel modules are first imported, which ``peftlab.kernels`` does lazily on first use.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# Ranks are padded to a power of two of at least 16: ``tl.arange`` needs power-of-two extents and
# 16-bit ``tl.dot`` on NVIDIA GPUs needs a reduction dimension of at least 16 (the rank-r dots).
MIN_PADDED_RANK = 16
# Above this rank the [BLOCK_M, rank] accumulators no longer fit next to the GEMM tile.
MAX_TRITON_RANK = 128
SUPPORTED_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def is_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET`` set to a true value)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def triton_is_installed() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def device_runs_triton(device: torch.device) -> bool:
    """True when Triton kernels can run on tensors of ``device`` (CUDA, or CPU under the interpreter)."""
    if device.type == "cuda":
        return not is_interpreting() and torch.cuda.is_available()
    return device.type == "cpu" and is_interpreting()


def padded_rank(rank: int) -> int:
    """The rank the kernels compute with: the next power of two, at least ``MIN_PADDED_RANK``."""
    padded = MIN_PADDED_RANK
    while padded < rank:
        padded *= 2
    return padded


def size_bucket(num_rows: int) -> int:
    """Round a token count up to a power of two, so autotuning runs once per size class, not per M."""
    bucket = 1
    while bucket < num_rows:
        bucket *= 2
    return bucket
