"""LoRA compute kernels: a pure-PyTorch reference and fused Triton kernels (installed as ``peftlab.kernels``).

``lora_linear`` is the single entry point the LoRA layers call:
``Y = X·Wᵀ (+ bias) + scaling · dropout(X)·Aᵀ·Bᵀ`` with ``W`` frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """LoRA linear. ``weight`` is (out, in) (any strides), ``lora_A`` (r, in), ``lora_B`` (out, r).

    The adapter branch runs in the adapter's dtype (fp32) and the sum is returned in ``x``'s dtype,
    as Hugging Face PEFT does.
    """
    result = F.linear(x, weight, bias)
    adapter_input = x.to(lora_A.dtype)
    if dropout_p > 0.0 and training:
        adapter_input = F.dropout(adapter_input, p=dropout_p, training=True)
    update = F.linear(F.linear(adapter_input, lora_A), lora_B) * scaling
    return (result + update).to(result.dtype)


__all__ = ["lora_linear"]
