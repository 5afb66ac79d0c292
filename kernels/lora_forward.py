"""Triton forward kernels of the LoRA linear ``Y = X·Wᵀ (+ bias) + s·dropout(X)·Aᵀ·Bᵀ`` (W frozen).

The rank-r product is folded into the base GEMM (as in LoRAFusion, arXiv 2510.00206): the low-rank up
projection is an extra rank-r slice of the reduction, ``Y = [X | s·S]·[W | B]ᵀ`` with ``S = dropout(X)·Aᵀ``,
so one kernel writes ``Y`` and ``S·Bᵀ`` is never materialised.

Two ways to get ``S`` (``[M, r]``, kept in fp32 for the backward pass):

* fold (dropout 0): every output tile accumulates ``X·Aᵀ`` next to ``X·Wᵀ`` in its K loop, so ``X`` is read
  once; the column-0 tile of each row block stores ``S``. The price is ``r / BLOCK_N`` redundant FLOPs
  (about 6 % of the base GEMM at r=16, BLOCK_N=256), cheaper than a second pass over ``X``.
* split (dropout > 0): ``_lora_shrink_kernel`` reads ``X`` once, applies the seeded mask and writes ``S``;
  the GEMM then starts its accumulator from ``s·S·Bᵀ``. Regenerating the mask in every output tile
  would cost ``N / BLOCK_N`` times the random numbers.

Several adapted layers that share an input (q/k/v, gate/up) run as "segments" of one launch: each
segment has its own ``W``, ``A``, ``B``, bias, scaling and output, and output tiles of all segments
share one grid, so neighbouring programs reuse ``X`` from L2. ``S`` holds ``R_PAD`` columns per segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .autotune_configs import FORWARD_CONFIGS, SHRINK_CONFIGS, prune_for_platform
from .dropout import keep_mask
from .precision import compute_dtype, dot_input_precision
from .tile_order import grouped_tile
from .triton_support import is_interpreting, padded_rank, size_bucket

# ``@triton.jit`` picks GPU or interpreter when this module is imported; the dispatcher checks this.
BUILT_FOR_INTERPRETER = is_interpreting()


@triton.jit
def _shrink_rows(
    pid_m, x_ptr, stride_xm, stride_xk, a_ptr, stride_ar, stride_ak, s_ptr, stride_sm, s_col0,
    seed, dropout_p, M, K, rank,
    DROPOUT: tl.constexpr, R_PAD: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``S[rows, s_col0 : s_col0 + R_PAD] = (keep ∘ X[rows]) · Aᵀ / (1 - p)`` for one block of rows."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    steps = tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, R_PAD)
    rows_wrapped = (rows % M).to(tl.int64)  # rows past M repeat real ones; their S is never stored
    x_ptrs = x_ptr + rows_wrapped[:, None] * stride_xm + steps[None, :] * stride_xk
    at_ptrs = a_ptr + steps[:, None] * stride_ak + ranks[None, :] * stride_ar
    rank_ok = ranks[None, :] < rank
    s_acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = steps < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0).to(COMPUTE_DTYPE)
        if DROPOUT:
            x = tl.where(keep_mask(seed, rows, k0, K, dropout_p, BLOCK_K), x, 0.0).to(COMPUTE_DTYPE)
        at = tl.load(at_ptrs, mask=k_ok[:, None] & rank_ok, other=0.0).to(COMPUTE_DTYPE)
        s_acc = tl.dot(x, at, s_acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        at_ptrs += BLOCK_K * stride_ak
    if DROPOUT:
        s_acc = s_acc * (1.0 / (1.0 - dropout_p))
    s_ptrs = s_ptr + rows.to(tl.int64)[:, None] * stride_sm + s_col0 + ranks[None, :]
    tl.store(s_ptrs, s_acc, mask=rows[:, None] < M)


@triton.autotune(
    configs=SHRINK_CONFIGS,
    key=["M_BUCKET", "K", "R_PAD", "NUM_SEGMENTS", "DROPOUT"],
    prune_configs_by={"early_config_prune": prune_for_platform},
)
@triton.jit
def _lora_shrink_kernel(
    x_ptr, stride_xm, stride_xk, a_ptrs, a_strides_r, a_strides_k, s_ptr, stride_sm,
    seeds, dropout_p, ranks, M, K, M_BUCKET,
    NUM_SEGMENTS: tl.constexpr, DROPOUT: tl.constexpr, R_PAD: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """``S = dropout(X)·Aᵀ`` for every segment; neighbouring programs take the same rows (X from L2)."""
    pid = tl.program_id(0)
    pid_m = pid // NUM_SEGMENTS
    segment = pid % NUM_SEGMENTS
    for i in tl.static_range(NUM_SEGMENTS):
        if (NUM_SEGMENTS == 1) or (segment == i):  # one segment: resolved at compile time
            _shrink_rows(
                pid_m, x_ptr, stride_xm, stride_xk, a_ptrs[i], a_strides_r[i], a_strides_k[i],
                s_ptr, stride_sm, i * R_PAD, seeds[i], dropout_p, M, K, ranks[i],
                DROPOUT, R_PAD, COMPUTE_DTYPE, DOT_PRECISION, BLOCK_M, BLOCK_K,
            )  # fmt: skip


@triton.jit
def _forward_tile(
    pid_m, pid_n, x_ptr, stride_xm, stride_xk, w_ptr, stride_wn, stride_wk,
    a_ptr, stride_ar, stride_ak, b_ptr, stride_bn, stride_br, bias_ptr, y_ptr, stride_ym, stride_yn,
    s_ptr, stride_sm, s_col0, scaling, M, N, K, rank,
    HAS_BIAS: tl.constexpr, FOLD_SHRINK: tl.constexpr, R_PAD: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One ``BLOCK_M x BLOCK_N`` tile of ``Y = X·Wᵀ + s·S·Bᵀ (+ bias)`` for one segment."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    steps = tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, R_PAD)
    # Rows/columns past the edge repeat real ones (results never stored), so only K needs load masks.
    rows_wrapped = (rows % M).to(tl.int64)
    cols_wrapped = (cols % N).to(tl.int64)
    row_ok = rows[:, None] < M
    s_ptrs = s_ptr + rows.to(tl.int64)[:, None] * stride_sm + s_col0 + ranks[None, :]
    bt_ptrs = b_ptr + ranks[:, None] * stride_br + cols_wrapped[None, :] * stride_bn
    bt = tl.load(bt_ptrs, mask=ranks[:, None] < rank, other=0.0).to(COMPUTE_DTYPE)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if not FOLD_SHRINK:  # prologue: the low-rank slice of the reduction first
        s_scaled = tl.load(s_ptrs, mask=row_ok, other=0.0) * scaling
        acc = tl.dot(s_scaled.to(COMPUTE_DTYPE), bt, acc, input_precision=DOT_PRECISION)

    x_ptrs = x_ptr + rows_wrapped[:, None] * stride_xm + steps[None, :] * stride_xk
    wt_ptrs = w_ptr + steps[:, None] * stride_wk + cols_wrapped[None, :] * stride_wn
    if FOLD_SHRINK:
        at_ptrs = a_ptr + steps[:, None] * stride_ak + ranks[None, :] * stride_ar
        rank_ok = ranks[None, :] < rank
        s_acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = steps < K - k0
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0).to(COMPUTE_DTYPE)
        wt = tl.load(wt_ptrs, mask=k_ok[:, None], other=0.0).to(COMPUTE_DTYPE)
        acc = tl.dot(x, wt, acc, input_precision=DOT_PRECISION)
        if FOLD_SHRINK:
            at = tl.load(at_ptrs, mask=k_ok[:, None] & rank_ok, other=0.0).to(COMPUTE_DTYPE)
            s_acc = tl.dot(x, at, s_acc, input_precision=DOT_PRECISION)
            at_ptrs += BLOCK_K * stride_ak
        x_ptrs += BLOCK_K * stride_xk
        wt_ptrs += BLOCK_K * stride_wk

    if FOLD_SHRINK:  # epilogue: the low-rank slice from the S accumulated above
        if pid_n == 0:
            tl.store(s_ptrs, s_acc, mask=row_ok)
        acc = tl.dot((s_acc * scaling).to(COMPUTE_DTYPE), bt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols_wrapped).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok & (cols[None, :] < N))


@triton.autotune(
    configs=FORWARD_CONFIGS,
    key=["M_BUCKET", "N_TOTAL", "K", "R_PAD", "NUM_SEGMENTS", "FOLD_SHRINK"],
    prune_configs_by={"early_config_prune": prune_for_platform},
)
@triton.jit
def _lora_forward_kernel(
    x_ptr, stride_xm, stride_xk, w_ptrs, w_strides_n, w_strides_k, a_ptrs, a_strides_r, a_strides_k,
    b_ptrs, b_strides_n, b_strides_r, bias_ptrs, y_ptrs, y_strides_m, y_strides_n, s_ptr, stride_sm,
    scalings, n_sizes, ranks, M, K, M_BUCKET, N_TOTAL,
    NUM_SEGMENTS: tl.constexpr, HAS_BIAS: tl.constexpr, FOLD_SHRINK: tl.constexpr, R_PAD: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Fused LoRA forward over the output tiles of all segments (one launch writes every ``Y``)."""
    num_pid_n = tl.cdiv(n_sizes[0], BLOCK_N)
    for i in tl.static_range(1, NUM_SEGMENTS):
        num_pid_n += tl.cdiv(n_sizes[i], BLOCK_N)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), num_pid_n, GROUP_M)
    first_tile = 0
    for i in tl.static_range(NUM_SEGMENTS):
        segment_tiles = tl.cdiv(n_sizes[i], BLOCK_N)
        # One segment needs no branch; with several, each program runs its segment's copy.
        if (NUM_SEGMENTS == 1) or ((pid_n >= first_tile) & (pid_n < first_tile + segment_tiles)):
            _forward_tile(
                pid_m, pid_n - first_tile, x_ptr, stride_xm, stride_xk,
                w_ptrs[i], w_strides_n[i], w_strides_k[i], a_ptrs[i], a_strides_r[i], a_strides_k[i],
                b_ptrs[i], b_strides_n[i], b_strides_r[i], bias_ptrs[i],
                y_ptrs[i], y_strides_m[i], y_strides_n[i], s_ptr, stride_sm, i * R_PAD,
                scalings[i], M, n_sizes[i], K, ranks[i],
                HAS_BIAS, FOLD_SHRINK, R_PAD, COMPUTE_DTYPE, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
        first_tile += segment_tiles


def lora_forward(
    x2d: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float,
    seeds: Sequence[int],
    fold_shrink: bool | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Launch the forward kernels for segments sharing ``x2d`` (``[M, K]``); returns ``([Y_i], S)``.

    ``S`` is ``[M, segments * R_PAD]`` fp32 (``dropout(X)·A_iᵀ`` in columns ``i*R_PAD : i*R_PAD + r_i``).
    ``fold_shrink`` defaults to folding when there is no dropout (see the module docstring).
    """
    num_rows, num_features = x2d.shape
    r_pad = padded_rank(max(a.shape[0] for a in lora_As))
    num_segments = len(weights)
    dropout = dropout_p > 0.0
    fold = not dropout if fold_shrink is None else fold_shrink
    if fold and dropout:
        raise ValueError("fold_shrink=True cannot apply dropout; it folds X·Aᵀ into the base GEMM unmasked")
    device = x2d.device
    s_cat = torch.empty((num_rows, num_segments * r_pad), dtype=torch.float32, device=device)
    outputs = [torch.empty((num_rows, w.shape[0]), dtype=x2d.dtype, device=device) for w in weights]
    has_bias = any(b is not None for b in biases)
    bias_args = tuple(
        b if b is not None else torch.zeros(w.shape[0], dtype=x2d.dtype, device=device)
        for b, w in zip(biases, weights, strict=True)
    )
    common = {
        "R_PAD": r_pad,
        "NUM_SEGMENTS": num_segments,
        "COMPUTE_DTYPE": compute_dtype(x2d.dtype),
        "DOT_PRECISION": dot_input_precision(x2d.dtype),
    }
    ranks = tuple(a.shape[0] for a in lora_As)
    if not fold:
        _lora_shrink_kernel[lambda meta: (triton.cdiv(num_rows, meta["BLOCK_M"]) * num_segments,)](
            x2d,
            x2d.stride(0),
            x2d.stride(1),
            tuple(lora_As),
            tuple(a.stride(0) for a in lora_As),
            tuple(a.stride(1) for a in lora_As),
            s_cat,
            s_cat.stride(0),
            tuple(seeds),
            float(dropout_p),
            ranks,
            num_rows,
            num_features,
            size_bucket(num_rows),
            DROPOUT=dropout,
            **common,
        )
    n_sizes = tuple(w.shape[0] for w in weights)

    def grid(meta: dict) -> tuple[int]:
        tiles_n = sum(triton.cdiv(n, meta["BLOCK_N"]) for n in n_sizes)
        return (triton.cdiv(num_rows, meta["BLOCK_M"]) * tiles_n,)

    _lora_forward_kernel[grid](
        x2d,
        x2d.stride(0),
        x2d.stride(1),
        tuple(weights),
        tuple(w.stride(0) for w in weights),
        tuple(w.stride(1) for w in weights),
        tuple(lora_As),
        tuple(a.stride(0) for a in lora_As),
        tuple(a.stride(1) for a in lora_As),
        tuple(lora_Bs),
        tuple(b.stride(0) for b in lora_Bs),
        tuple(b.stride(1) for b in lora_Bs),
        bias_args,
        tuple(outputs),
        tuple(y.stride(0) for y in outputs),
        tuple(y.stride(1) for y in outputs),
        s_cat,
        s_cat.stride(0),
        tuple(float(s) for s in scalings),
        n_sizes,
        ranks,
        num_rows,
        num_features,
        size_bucket(num_rows),
        sum(n_sizes),
        HAS_BIAS=has_bias,
        FOLD_SHRINK=fold,
        **common,
    )
    return outputs, s_cat
