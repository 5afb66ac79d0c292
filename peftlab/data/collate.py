"""Examples -> tensors: dynamic padding to the longest example of a batch, and sequence packing.

Packing concatenates examples into rows of at most ``max_length`` tokens. Each example's
``position_ids`` restart at 0 and no ``attention_mask`` is passed: ``transformers`` (5.x) then builds a
block-diagonal causal mask from the position resets (with the KV cache off, see ``model_inputs``), so
packed examples never attend to each other.
The first label of every packed example is masked, as it is (implicitly) without packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from peftlab.data.encode import IGNORE_INDEX, ClassificationExample, Example, TokenExample

Batch = dict[str, torch.Tensor]
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


def collate(examples: Sequence[Example], pad_token_id: int) -> Batch:
    """Pad a list of examples on the right into ``input_ids``, ``attention_mask`` and ``labels`` tensors
    (plus ``num_tokens``, the count of real tokens).

    Token examples get ``labels`` of shape (B, T) with ``IGNORE_INDEX`` on padding; classification
    examples get ``labels`` of shape (B,), and ``token_type_ids`` (padding: segment 0) when they carry
    segment ids.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, : len(example.input_ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "num_tokens": attention_mask.sum()}
    if all(isinstance(e, ClassificationExample) for e in examples):
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
        if any(e.token_type_ids is not None for e in examples):
            batch["token_type_ids"] = _segment_ids(examples, length)
        return batch
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
    batch["labels"] = labels
    return batch


def _segment_ids(examples: Sequence[ClassificationExample], length: int) -> torch.Tensor:
    segments = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        if example.token_type_ids is not None:
            segments[row, : len(example.token_type_ids)] = torch.tensor(example.token_type_ids, dtype=torch.long)
    return segments


class PackedExample:
    """Several token examples concatenated into one row, with per-example position ids."""

    def __init__(self) -> None:
        self.input_ids: list[int] = []
        self.labels: list[int] = []
        self.position_ids: list[int] = []

    def add(self, example: TokenExample) -> None:
        """Append ``example``; its positions restart at 0 and its first label is masked."""
        self.input_ids += example.input_ids
        self.labels += [IGNORE_INDEX, *example.labels[1:]]
        self.position_ids += list(range(len(example.input_ids)))


def pack(examples: Sequence[Example], max_length: int) -> list[PackedExample]:
    """Greedily pack token examples, in order, into rows of at most ``max_length`` tokens."""
    rows: list[PackedExample] = []
    for example in examples:
        if not isinstance(example, TokenExample):
            raise ValueError(
                "packing applies to causal-LM examples only (not classification); set data.packing=false"
            )
        if len(example.input_ids) > max_length:
            raise ValueError(
                f"an example of {len(example.input_ids)} tokens cannot be packed into rows of {max_length}"
            )
        if not rows or len(rows[-1].input_ids) + len(example.input_ids) > max_length:
            rows.append(PackedExample())
        rows[-1].add(example)
    return rows


def collate_packed(rows: Sequence[PackedExample], pad_token_id: int) -> Batch:
    """Pad packed rows into ``input_ids``, ``labels``, ``position_ids``, ``num_tokens`` (no attention mask).

    Padding continues the last example's positions, so it forms no new sequence, and its labels are ignored.
    """
    if not rows:
        raise ValueError("cannot collate an empty batch")
    length = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        size = len(row.input_ids)
        input_ids[index, :size] = torch.tensor(row.input_ids, dtype=torch.long)
        labels[index, :size] = torch.tensor(row.labels, dtype=torch.long)
        last = row.position_ids[-1] if row.position_ids else -1
        position_ids[index] = torch.tensor(row.position_ids + list(range(last + 1, last + 1 + length - size)))
    num_tokens = torch.tensor(sum(len(r.input_ids) for r in rows))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "num_tokens": num_tokens}


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The model's forward keyword arguments for a batch (``labels`` and ``num_tokens`` are for the loss).

    Packed batches also get ``use_cache=False``: ``transformers`` only derives the per-example mask from
    ``position_ids`` when no KV cache is in play.
    """
    inputs: dict[str, Any] = {name: tensor for name, tensor in batch.items() if name in MODEL_INPUT_NAMES}
    if "position_ids" in inputs and "attention_mask" not in inputs:
        inputs["use_cache"] = False
    return inputs


def count_tokens(batch: Batch) -> int:
    """Real (non-padding) input tokens of a batch: ``num_tokens``, else the attention mask's sum."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
