"""Continue a classification run on another task with a newly initialised head (``train.init_head=new``).

The LoRA paper adapts RTE, MRPC and STS-B starting from its MNLI-adapted module: the adapter (or the
fully fine-tuned body) carries over, the classification head, whose size is the number of labels, does
not. Loading then keeps the model's own freshly drawn head in place of the saved one.
"""

from __future__ import annotations

import torch

from peftlab.methods.base import CLASSIFICATION_HEAD_NAMES

INIT_HEAD_CHOICES = ("keep", "new")


def is_head_key(key: str) -> bool:
    """Whether a saved tensor's name lies inside a classification head module."""
    return any(part in CLASSIFICATION_HEAD_NAMES for part in key.split(".")[:-1])


def with_fresh_head(
    saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """``saved`` with every head tensor replaced by the model's ``current`` one (same names).

    Raises ``ValueError`` naming ``source`` when the saved tensors hold no head to replace, so a wrong
    ``train.init_head=new`` does not pass silently.
    """
    head_keys = [key for key in saved if is_head_key(key)]
    if not head_keys:
        raise ValueError(
            f"{source}: train.init_head=new, but the saved tensors hold no classification head "
            f"({' / '.join(CLASSIFICATION_HEAD_NAMES)}) to replace"
        )
    fresh = dict(saved)
    for key in head_keys:
        if key not in current:
            raise ValueError(f"{source}: head tensor {key!r} has no place in this model")
        fresh[key] = current[key].detach().clone()
    return fresh


def check_init_head(init_head: str, init_from: str | None, task: str) -> None:
    """Raise ``ValueError`` naming ``train.init_head`` when its value is unknown or cannot apply."""
    if init_head not in INIT_HEAD_CHOICES:
        raise ValueError(f"train.init_head is {init_head!r}; choose one of {', '.join(INIT_HEAD_CHOICES)}")
    if init_head == "new" and not init_from:
        raise ValueError("train.init_head=new needs train.init_from (the run whose adapter or weights to continue)")
    if init_head == "new" and task != "sequence_classification":
        raise ValueError(
            f"train.init_head=new applies to model.task=sequence_classification, not {task}: "
            "other tasks have no classification head to replace"
        )
