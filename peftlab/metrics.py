"""Loss and accuracy, computed from logits aligned to labels (never from the model's own ``loss``).

For causal LMs the logit at position ``t`` predicts the label at ``t + 1``; positions labelled
``IGNORE_INDEX`` are skipped. Methods that prepend virtual tokens (prompt tuning) return logits longer
than the labels: the leading virtual positions are dropped first. Each function returns *sums* and
*counts* so that gradient accumulation and evaluation over many batches weight every token equally.

Mean token accuracy = (target tokens whose argmax prediction is right) / (target tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossTerms:
    """Summed loss (a tensor that carries gradients), right predictions and targets of one batch."""

    loss_sum: torch.Tensor
    correct: int
    count: int


def align_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Drop leading virtual-token positions so ``logits`` has as many positions as ``labels``."""
    extra = logits.shape[1] - labels.shape[1]
    if extra < 0:
        raise ValueError(f"logits cover {logits.shape[1]} positions, fewer than the {labels.shape[1]} labels")
    return logits[:, extra:] if extra else logits


def causal_lm_terms(logits: torch.Tensor, labels: torch.Tensor) -> LossTerms:
    """Next-token cross-entropy (summed, in fp32) and accuracy over the positions with a label."""
    logits = align_logits(logits, labels)[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    correct = int(((logits.argmax(-1) == targets) & mask).sum())
    return LossTerms(loss_sum, correct, int(mask.sum()))


def classification_terms(logits: torch.Tensor, labels: torch.Tensor) -> LossTerms:
    """Cross-entropy (summed, in fp32) and accuracy of per-sequence class logits ``(B, num_labels)``."""
    logits = logits.float()
    labels = labels.to(logits.device)
    loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return LossTerms(loss_sum, int((logits.argmax(-1) == labels).sum()), int((labels != IGNORE_INDEX).sum()))


def count_targets(labels: torch.Tensor) -> int:
    """How many predictions a batch's loss averages over: label positions after the shift, or sequences."""
    if labels.dim() == 1:  # sequence labels; IGNORE_INDEX marks a placeholder row (peftlab.distributed)
        return int((labels != IGNORE_INDEX).sum())
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def mean_token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of target tokens predicted right (argmax), over the positions with a label."""
    terms = causal_lm_terms(logits, labels)
    return terms.correct / terms.count if terms.count else float("nan")
