"""Batches in a seeded order that can restart from any position (what checkpoint/resume needs).

Epoch ``e`` visits the examples in the permutation drawn from ``torch.Generator`` seeded with
``seed + e``, so the order depends only on the seed and the epoch: a resumed run skips the batches it
has already seen and continues with exactly the ones the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from peftlab.data.collate import Batch


class BatchLoader:
    """Iterates ``collate_fn(items[i:i + batch_size])`` over a (seeded, per-epoch) shuffled list."""

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate_fn: Callable[[Sequence[Any]], Batch],
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
        if not items:
            raise ValueError("no examples to load")
        self.items = list(items)
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        """Batches per epoch (the last one may be smaller)."""
        return math.ceil(len(self.items) / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """The example indices of ``epoch`` in the order they are visited."""
        if not self.shuffle:
            return list(range(len(self.items)))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.items), generator=generator).tolist()

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, beginning with batch number ``start`` (0-based)."""
        order = self.order(epoch)
        for first in range(start * self.batch_size, len(order), self.batch_size):
            yield self.collate_fn([self.items[i] for i in order[first : first + self.batch_size]])

    def __iter__(self) -> Iterator[Batch]:
        """The batches of epoch 0 (evaluation loaders are not shuffled)."""
        return self.batches(0)
