"""How a BERT-style classifier turns its token states into one vector: ``model.pooling``.

``cls`` (the default) keeps the model as ``AutoModelForSequenceClassification`` builds it: BERT's pooler,
a dense layer and tanh on the first token. ``mean`` replaces that pooler with the mean of the last
hidden states over the attended tokens, the pooling sentence-embedding checkpoints (all-MiniLM-L6-v2 and
the other sentence-transformers models) were trained with; the classifier then reads that mean. Under
prompt tuning the mean includes the virtual tokens, which the attention mask marks as attended.

The pooler receives only the hidden states, so a forward pre-hook on the encoder hands it the attention
mask of each call (and a forward hook drops it afterwards).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

POOLINGS = ("cls", "mean")


class MaskedMeanPooler(nn.Module):
    """The mean of ``hidden_states`` ``[batch, length, hidden]`` over the positions the mask attends."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Masked mean over the sequence; the plain mean when the encoder was called without a mask."""
        mask = self.attention_mask
        if mask is None:
            return hidden_states.mean(dim=1)
        if mask.dim() != 2 or mask.shape[1] != hidden_states.shape[1]:
            raise ValueError(
                f"model.pooling=mean takes a 2-D attention mask [batch, length] matching the hidden states "
                f"{tuple(hidden_states.shape[:2])}, got shape {tuple(mask.shape)}"
            )
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def check_pooling(pooling: str, task: str) -> None:
    """Raise ``ValueError`` naming ``model.pooling`` when it is unknown or set for a causal LM."""
    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling is {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling != "cls" and task != "sequence_classification":
        raise ValueError(
            f"model.pooling={pooling} applies to model.task=sequence_classification; this run's task is {task}"
        )


def apply_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Give a sequence classifier the named pooling, in place (``cls``: leave it as it is)."""
    check_pooling(pooling, "sequence_classification")
    if pooling == "cls":
        return model
    encoder = getattr(model, "base_model", None)
    if encoder is None or not isinstance(getattr(encoder, "pooler", None), nn.Module):
        raise ValueError(
            f"model.pooling={pooling} replaces the encoder's pooler, and {type(model).__name__} has none "
            "(BERT-style classifiers do; RoBERTa's head reads the first token itself); use model.pooling=cls"
        )
    if isinstance(encoder.pooler, MaskedMeanPooler):
        return model
    encoder.pooler = MaskedMeanPooler()
    # module-level hooks that find the pooler on the encoder they run on, so a deep copy of the model
    # (or a pickled one) pools with its own mask rather than its original's
    encoder.register_forward_pre_hook(_hand_mask_to_pooler, with_kwargs=True)
    encoder.register_forward_hook(_drop_pooler_mask)
    return model


def _hand_mask_to_pooler(encoder: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if isinstance(encoder.pooler, MaskedMeanPooler):
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else _positional_mask(args)
        encoder.pooler.attention_mask = mask


def _drop_pooler_mask(encoder: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    if isinstance(encoder.pooler, MaskedMeanPooler):
        encoder.pooler.attention_mask = None


def _positional_mask(args: tuple[Any, ...]) -> torch.Tensor | None:
    # BERT-style encoders take (input_ids, attention_mask, ...)
    return args[1] if len(args) > 1 else None


__all__ = ["POOLINGS", "MaskedMeanPooler", "apply_pooling", "check_pooling"]
