"""Pure-PyTorch LoRA linear: the CPU path and the oracle the Triton kernels are tested against.

``Y = X·Wᵀ (+ bias) + scaling · dropout(X)·Aᵀ·Bᵀ`` (Hu et al., LoRA, arXiv 2106.09685, eq. 3, with
PEFT's dropout on the adapter input). The adapter branch runs in the adapter's dtype and the sum is
returned in the base output's dtype, as Hugging Face PEFT does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """LoRA linear in plain PyTorch. ``weight`` is (out, in), ``lora_A`` (r, in), ``lora_B`` (out, r).

    Dropout is ``F.dropout`` when ``training``; a given ``keep_mask`` (bool, ``x``'s shape) replaces it
    (kept inputs scaled by ``1 / (1 - dropout_p)``), which lets tests replay the Triton kernels' mask.
    """
    result = F.linear(x, weight, bias)
    adapter_input = x.to(lora_A.dtype)
    if keep_mask is not None:
        adapter_input = adapter_input * keep_mask.to(adapter_input.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0 and training:
        adapter_input = F.dropout(adapter_input, p=dropout_p, training=True)
    update = F.linear(F.linear(adapter_input, lora_A), lora_B) * scaling
    return (result + update).to(result.dtype)


def lora_linear_shared_input_reference(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float = 0.0,
    training: bool = False,
    keep_masks: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """One ``lora_linear_reference`` per layer reading ``x`` (each layer draws its own dropout mask)."""
    masks = keep_masks if keep_masks is not None else [None] * len(weights)
    return tuple(
        lora_linear_reference(x, w, b, a, b_up, s, dropout_p, training, keep_mask=m)
        for w, b, a, b_up, s, m in zip(weights, biases, lora_As, lora_Bs, scalings, masks, strict=True)
    )
