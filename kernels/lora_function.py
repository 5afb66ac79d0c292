"""Autograd function over the fused Triton LoRA kernels, and the Triton entry for one adapted linear.

``LoRALinearFunction`` computes ``Y_i = X·W_iᵀ (+ b_i) + s_i·dropout_i(X)·A_iᵀ·B_iᵀ`` for one or more
adapted layers that read the same ``X`` ("segments"; one segment is the plain LoRA linear). It saves
``X``, the fp32 ``S_i = dropout_i(X)·A_iᵀ`` (``[M, r]``, tiny) and the weights; dropout masks are
regenerated from per-segment seeds in backward, never stored.

Gradients: ``X``, ``A_i``, ``B_i``; ``W_i`` is frozen (no gradient). A bias that requires grad gets
``dY_i`` summed over tokens (a plain torch reduction; PEFT's ``bias="all"``/``"lora_only"``); a frozen
bias gets none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from .dropout import draw_dropout_seeds
from .lora_backward import lora_backward
from .lora_forward import lora_forward

_TENSORS_PER_SEGMENT = 4  # weight, bias, lora_A, lora_B


class LoRALinearFunction(torch.autograd.Function):
    """Fused LoRA linear over segments sharing ``x2d``; ``params`` is ``(W, bias, A, B)`` per segment."""

    @staticmethod
    def forward(
        ctx: Any,
        x2d: torch.Tensor,
        scalings: tuple[float, ...],
        dropout_p: float,
        seeds: tuple[int, ...],
        *params: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """Run the forward kernels; returns one ``[M, N_i]`` output per segment."""
        weights, biases, lora_As, lora_Bs = (list(params[j::_TENSORS_PER_SEGMENT]) for j in range(4))
        outputs, s_cat = lora_forward(x2d, weights, biases, lora_As, lora_Bs, scalings, dropout_p, seeds)
        ctx.save_for_backward(x2d, s_cat, *weights, *lora_As, *lora_Bs)
        ctx.scalings, ctx.dropout_p, ctx.seeds = scalings, dropout_p, seeds
        ctx.bias_dtypes = [None if b is None else b.dtype for b in biases]
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Run the backward kernel; no gradient for the weights, seeds or scalings."""
        x2d, s_cat, *saved = ctx.saved_tensors
        num_segments = len(ctx.scalings)
        weights = saved[:num_segments]
        lora_As = saved[num_segments : 2 * num_segments]
        lora_Bs = saved[2 * num_segments :]
        needs = ctx.needs_input_grad
        grad_x, grads_a, grads_b = lora_backward(
            grad_outputs,
            x2d,
            weights,
            lora_As,
            lora_Bs,
            s_cat,
            ctx.scalings,
            ctx.dropout_p,
            ctx.seeds,
            compute_dx=needs[0],
        )
        grads: list[torch.Tensor | None] = [grad_x, None, None, None]
        for i in range(num_segments):
            first = 4 + _TENSORS_PER_SEGMENT * i
            grad_bias = None
            if needs[first + 1]:
                grad_bias = grad_outputs[i].sum(0, dtype=torch.float32).to(ctx.bias_dtypes[i])
            grads += [
                None,
                grad_bias,
                grads_a[i] if needs[first + 2] else None,
                grads_b[i] if needs[first + 3] else None,
            ]
        return tuple(grads)


def triton_lora_segments(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float,
    training: bool,
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Fused LoRA for layers sharing ``x`` (any leading dims, any strides); one output per layer.

    Inputs are taken as given (dtype and device checks live in ``peftlab.kernels.dispatch``).
    Dropout applies only when ``training``; ``seeds`` (one per layer) default to fresh draws from
    PyTorch's CPU generator.
    """
    p = float(dropout_p) if training else 0.0
    if seeds is None:
        seeds = draw_dropout_seeds(len(weights)) if p > 0.0 else (0,) * len(weights)
    leading = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    params: list[torch.Tensor | None] = []
    for w, b, a, b_up in zip(weights, biases, lora_As, lora_Bs, strict=True):
        params += [w, None if b is None else b.contiguous(), a, b_up]
    # Triton launches on the current CUDA device; make it x's (autograd does the same for backward).
    on_device = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with on_device:
        outputs = LoRALinearFunction.apply(
            x2d, tuple(float(s) for s in scalings), p, tuple(int(s) for s in seeds), *params
        )
    return tuple(y.view(*leading, y.shape[-1]) for y in outputs)


def triton_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Fused Triton LoRA linear ``x·Wᵀ (+ bias) + scaling·dropout(x)·Aᵀ·Bᵀ`` in ``x``'s dtype."""
    seeds = None if seed is None else (seed,)
    return triton_lora_segments(
        x, [weight], [bias], [lora_A], [lora_B], [scaling], dropout_p, training, seeds
    )[0]
