"""Seeded dropout masks for the LoRA kernels: drawn in forward, regenerated in backward, never stored.

One Philox-4x32-10 call (``tl.randint4x``) yields four 32-bit words = eight 16-bit draws, so it decides
eight neighbouring columns: element ``(row, col)`` of the flattened ``[M, K]`` input uses counter
``row * ceil(K / 8) + col // 8`` and draw ``col % 8``, and is kept when that draw is at least
``ceil(p · 65536)`` (keep probability ``1 - p`` to within 2⁻¹⁶); kept values are scaled by ``1 / (1 - p)``.
Eight columns per call makes the random numbers about 8x cheaper than ``tl.rand`` per element, which
matters because the mask is made twice (forward, backward) over all of ``X``.

The counter depends only on the logical position, not on strides or tile sizes (tiles start at a
multiple of 8 columns), so every kernel and ``dropout_keep_mask`` (which exposes the mask to tests)
regenerate exactly the same mask from the same seed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_SEED = 2**31 - 1
_MASK_BLOCK = 64  # tile of the stand-alone mask kernel (few programs: fast in the interpreter too)


def draw_dropout_seeds(count: int) -> tuple[int, ...]:
    """Draw ``count`` Philox seeds from PyTorch's CPU generator (reproducible under ``torch.manual_seed``).

    Drawing on the CPU keeps the GPU stream free of a device-to-host sync.
    """
    return tuple(int(seed) for seed in torch.randint(_MAX_SEED, (count,)).tolist())


@triton.jit
def _keep_halves(word, threshold):
    """Keep decisions from the low and high 16 bits of a random word."""
    return (word & 0xFFFF) >= threshold, (word >> 16) >= threshold


@triton.jit
def keep_mask(seed, rows, col_start, num_cols, dropout_p, BLOCK_K: tl.constexpr):
    """Keep mask (bool ``[len(rows), BLOCK_K]``) for columns ``col_start : col_start + BLOCK_K``.

    ``col_start`` and ``BLOCK_K`` must be multiples of 8. Rows may be any values (int64 counters).
    """
    groups = col_start // 8 + tl.arange(0, BLOCK_K // 8)
    counters = rows.to(tl.int64)[:, None] * tl.cdiv(num_cols, 8) + groups.to(tl.int64)[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, counters)
    threshold = tl.math.ceil(dropout_p * 65536.0).to(tl.uint32)
    k0, k1 = _keep_halves(w0, threshold)
    k2, k3 = _keep_halves(w1, threshold)
    k4, k5 = _keep_halves(w2, threshold)
    k6, k7 = _keep_halves(w3, threshold)
    # [rows, groups, 2, 2, 2] -> [rows, groups * 8]: each group's eight decisions fill its eight columns
    # in one fixed order, whatever the tile width.
    keep = tl.join(tl.join(tl.join(k0, k4), tl.join(k2, k6)), tl.join(tl.join(k1, k5), tl.join(k3, k7)))
    return tl.reshape(keep, (rows.shape[0], BLOCK_K))


@triton.jit
def _keep_mask_kernel(out_ptr, seed, M, K, dropout_p, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_start = tl.program_id(1) * BLOCK_K
    cols = col_start + tl.arange(0, BLOCK_K)
    keep = keep_mask(seed, rows, col_start, K, dropout_p, BLOCK_K)
    in_bounds = (rows[:, None] < M) & (cols[None, :] < K)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], keep.to(tl.int8), mask=in_bounds)


def dropout_keep_mask(
    seed: int,
    shape: tuple[int, ...],
    dropout_p: float,
    device: torch.device | str,
    block_cols: int = _MASK_BLOCK,
) -> torch.Tensor:
    """The keep mask (bool, ``shape``) the kernels use for ``seed``; inputs are flattened to ``[-1, shape[-1]]``.

    ``block_cols`` (a power of two >= 8) is this kernel's tile width; the mask does not depend on it.
    """
    num_cols = shape[-1]
    num_rows = 1
    for size in shape[:-1]:
        num_rows *= size
    out = torch.empty((num_rows, num_cols), dtype=torch.int8, device=device)
    grid = (triton.cdiv(num_rows, _MASK_BLOCK), triton.cdiv(num_cols, block_cols))
    _keep_mask_kernel[grid](
        out, seed, num_rows, num_cols, float(dropout_p), BLOCK_M=_MASK_BLOCK, BLOCK_K=block_cols
    )
    return out.view(shape).bool()
