"""Shared pytest setup: Triton kernels run in the CPU interpreter when there is no GPU; `cuda` tests skip."""

from __future__ import annotations

import os

import pytest
import torch

# Must happen before any @triton.jit runs (the kernel modules are imported lazily, on first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
