"""The optimiser of a run: AdamW over the trainable parameters, with LoRA+'s own rate for LoRA's B.

LoRA+ (Hayou, Ghosh and Yu, 2024, arXiv 2402.12354) trains each LoRA layer's ``B`` at ``lr × ratio`` and
everything else (``A``, a classification head, prompt or prefix tables) at ``lr``; the paper suggests a
ratio of about 16 and a base rate somewhat below plain LoRA's. With ``train.loraplus_lr_ratio=1`` (the
default) this is plain AdamW in one parameter group, so older checkpoints resume unchanged.

``peft.optimizers.create_loraplus_optimizer`` also gives every 1-D trained tensor (biases, norms) the B
rate; here only the B matrices get it, as in the paper's definition ``η_B = λ·η_A``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from peftlab.methods.lora import LoRALinear
from peftlab.run_config import PEFT_LORA

LORA_METHODS = ("lora", PEFT_LORA)  # the method names whose models have LoRA layers


def check_loraplus_lr_ratio(ratio: float, method_name: str) -> None:
    """Refuse a ratio that is not a positive number, or one other than 1 for a method without LoRA."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"train.loraplus_lr_ratio is {ratio}; it must be a finite number above 0")
    if ratio != 1 and method_name not in LORA_METHODS:
        raise ValueError(
            f"train.loraplus_lr_ratio is {ratio}, but method {method_name!r} has no LoRA layers; it sets "
            "the rate of LoRA's B matrices (leave it at 1 for other methods)"
        )


def lora_b_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The trainable ``B`` matrix of every LoRA layer in ``model``."""
    return [m.lora_B for m in model.modules() if isinstance(m, LoRALinear) and m.lora_B.requires_grad]


def parameter_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: the trainable parameters at ``lr``, LoRA's ``B`` at ``lr × loraplus_lr_ratio``.

    One group when the ratio is 1. A ratio other than 1 on a model with no LoRA layer is an error: the
    setting would silently do nothing.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if loraplus_lr_ratio == 1:
        return [{"params": trainable, "lr": lr}]
    faster = {id(p) for p in lora_b_matrices(model)}
    if not faster:
        raise ValueError(
            f"train.loraplus_lr_ratio is {loraplus_lr_ratio}, but the model has no trainable LoRA layer; "
            "it applies to LoRA's B matrices only (set it to 1 for other methods)"
        )
    return [
        {"params": [p for p in trainable if id(p) not in faster], "lr": lr},
        {"params": [p for p in trainable if id(p) in faster], "lr": lr * loraplus_lr_ratio},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, loraplus_lr_ratio: float = 1.0
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (see ``parameter_groups``)."""
    return torch.optim.AdamW(parameter_groups(model, lr, loraplus_lr_ratio), lr=lr, weight_decay=weight_decay)
