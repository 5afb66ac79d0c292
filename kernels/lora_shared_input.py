"""Fused LoRA for adapted layers that share one input (q/k/v, gate/up): ``X`` is read once for all.

Each layer ``i`` computes ``Y_i = X·W_iᵀ (+ b_i) + s_i·dropout_i(X)·A_iᵀ·B_iᵀ``. Instead of one fused
LoRA linear per layer (which re-reads ``X`` for every layer, forward and backward), the layers run as
segments of the same kernels (``lora_forward.py``, ``lora_backward.py``):

* forward, one launch over the output tiles of all layers, neighbouring programs sharing ``X`` row
  blocks through L2; with dropout, one extra pass over ``X`` computes every layer's ``S_i``;
* backward, one launch in which each ``dX`` tile sums ``dY_i·W_i + m_i ∘ (dS_i·A_i)`` over the layers, so
  ``dX`` is written once instead of being accumulated layer by layer, and ``X`` is read once for all ``dA_i``.

Layers may differ in output size, rank (padded to the largest), scaling, bias and weight layout; each
draws its own dropout mask (its own seed), exactly like separate PEFT layers. The LoRA method can call
``peftlab.kernels.lora_linear_shared_input`` where a block's projections read the same hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .lora_function import triton_lora_segments


def triton_lora_linear_shared_input(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float = 0.0,
    training: bool = False,
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Fused Triton LoRA over layers sharing ``x``; returns one output per layer in ``x``'s dtype.

    ``seeds`` (one per layer) fix the dropout masks; by default they are drawn from PyTorch's CPU
    generator. Input checks live in ``peftlab.kernels.dispatch.lora_linear_shared_input``.
    """
    return triton_lora_segments(x, weights, biases, lora_As, lora_Bs, scalings, dropout_p, training, seeds)
