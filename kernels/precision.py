"""Which element type the LoRA kernels compute in, and how ``tl.dot`` treats fp32 inputs."""

from __future__ import annotations

import torch
import triton.language as tl

from .triton_support import is_interpreting

_TRITON_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def compute_dtype(dtype: torch.dtype) -> tl.dtype:
    """The operand type of every ``tl.dot`` for inputs of ``dtype`` (accumulation is always fp32).

    On the GPU this is the input's own type (bf16/fp16 tensor cores); the adapter weights are cast to
    it tile by tile. The CPU interpreter mis-multiplies bf16 (it treats the bits as integers), so
    there every loaded tile is cast to fp32 instead.
    """
    if is_interpreting():
        return tl.float32
    return _TRITON_DTYPES[dtype]


def dot_input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for ``dtype`` inputs, following PyTorch's own matmul setting.

    fp32 matmuls use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is on (PyTorch's default
    is off), so fp32 inputs get exact ``"ieee"`` products like ``F.linear``. The setting only matters
    for fp32 operands; the interpreter always multiplies exactly.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
