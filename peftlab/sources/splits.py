"""Deterministic train/validation/test splits.

The examples are shuffled with Python's ``random.Random(seed).shuffle`` (stable across platforms and
Python versions) and then cut in order: the first ``train`` go to train, the next ``valid`` to
validation, the next ``test`` to test. With ``valid=0`` this is exactly the split of the ``peft``
anchor runs (Pang & Lee: ``random.Random(0)``, 3,000 train / 1,000 test).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

Item = TypeVar("Item")
Size = int | float


@dataclass(frozen=True)
class SplitSizes:
    """How many examples each split gets: a count (int) or a fraction of all examples (float).

    ``test=None`` gives the test split whatever train and validation leave.
    """

    train: Size = 0.8
    valid: Size = 0.1
    test: Size | None = None


def split_counts(total: int, sizes: SplitSizes) -> tuple[int, int, int]:
    """The number of examples in train, validation and test for ``total`` examples."""
    train = _count(sizes.train, total, "train")
    valid = _count(sizes.valid, total, "valid")
    test = total - train - valid if sizes.test is None else _count(sizes.test, total, "test")
    if train + valid + test > total or test < 0:
        raise ValueError(
            f"split sizes train={sizes.train}, valid={sizes.valid}, test={sizes.test} need "
            f"{train + valid + max(test, 0)} examples but the task has {total}"
        )
    return train, valid, test


def split_examples(
    items: Sequence[Item], sizes: SplitSizes, seed: int = 0
) -> tuple[list[Item], list[Item], list[Item]]:
    """Shuffle a copy of ``items`` with ``random.Random(seed)`` and cut it into train, validation and test."""
    train, valid, test = split_counts(len(items), sizes)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:train], shuffled[train : train + valid], shuffled[train + valid : train + valid + test]


def _count(size: Size, total: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"split size {name}={size!r} must be a count (int) or a fraction (float)")
    if isinstance(size, float):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"split fraction {name}={size} must lie in [0, 1]")
        return round(size * total)
    if size < 0:
        raise ValueError(f"split size {name}={size} must not be negative")
    return size
