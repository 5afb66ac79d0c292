"""Triton backward kernel of the LoRA linear: dX, dA and dB in one launch, no gradient for the frozen W.

With ``S = dropout(X)·Aᵀ``, ``dS = s·dY·B`` and the keep mask ``m`` (scaled by ``1/(1-p)``):

* ``dX = dY·W + m ∘ (dS·A)``   the rank-r term is an extra slice of the grad-input GEMM's reduction;
* ``dB = s·dYᵀ·S``             accumulated while the column-0 tiles stream ``dY`` anyway;
* ``dA = dSᵀ·(m ∘ X)``          from the ``X`` tile at each output position, the one unavoidable read of ``X``.

Each program owns a ``BLOCK_M x BLOCK_K`` tile of ``dX``. Its loop over the output features reads the
``dY`` rows once and accumulates both ``dY·W`` and ``dY·B`` (so ``dS`` never goes to memory; every
column tile recomputes it, ``r / BLOCK_K`` extra FLOPs, cheaper than a second pass over ``dY``). The
programs of column tile 0 also add their rows' share of ``dB``, and every program adds its share of
``dA``, with fp32 atomics into zeroed buffers (so gradient sums are not bitwise deterministic).
The dropout mask is regenerated from the forward seed for the tile being written; nothing was stored.
With dropout the masked rank-r term cannot be accumulated into the GEMM tile, so the tile is written
first and the term added on top (an L2-resident read-modify-write) to keep register pressure down.
Segments (layers sharing ``X``) add into the same ``dX`` tile one after another.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .autotune_configs import BACKWARD_CONFIGS, prune_for_platform
from .dropout import keep_mask
from .precision import compute_dtype, dot_input_precision
from .tile_order import grouped_tile
from .triton_support import size_bucket


@triton.jit
def _stream_grad_output(
    acc, rows, cols_wrapped, with_db, dy_ptr, stride_dym, stride_dyn, w_ptr, stride_wn, stride_wk,
    b_ptr, stride_bn, stride_br, s_ptr, stride_sm, s_col0, db_ptr, db_row0, scaling, M, N, rank,
    COMPUTE_DX: tl.constexpr, R_PAD: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One pass over this segment's ``dY`` rows: ``acc += dY·W`` and ``dS = s·dY·B`` (returned, fp32).

    When ``with_db`` (column tile 0) it also adds ``s·dYᵀ·S`` for these rows into ``dB``.
    """
    steps = tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, R_PAD)
    rank_ok = ranks < rank
    rows_wrapped = (rows % M).to(tl.int64)  # rows past M repeat real ones; never stored, masked for dB
    dy_ptrs = dy_ptr + rows_wrapped[:, None] * stride_dym + steps[None, :] * stride_dyn
    w_ptrs = w_ptr + steps[:, None] * stride_wn + cols_wrapped[None, :] * stride_wk
    b_ptrs = b_ptr + steps[:, None] * stride_bn + ranks[None, :] * stride_br
    s_tile = tl.load(
        s_ptr + rows.to(tl.int64)[:, None] * stride_sm + s_col0 + ranks[None, :],
        mask=rows[:, None] < tl.where(with_db, M, 0),  # only column tile 0 needs S
        other=0.0,
    ).to(COMPUTE_DTYPE)
    db_ptrs = db_ptr + (db_row0 + steps.to(tl.int64))[:, None] * R_PAD + ranks[None, :]
    ds = tl.zeros((rows.shape[0], R_PAD), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_ok = steps < N - n0
        dy = tl.load(dy_ptrs, mask=n_ok[None, :], other=0.0).to(COMPUTE_DTYPE)
        if COMPUTE_DX:
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0).to(COMPUTE_DTYPE)
            acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
        b = tl.load(b_ptrs, mask=n_ok[:, None] & rank_ok[None, :], other=0.0).to(COMPUTE_DTYPE)
        ds = tl.dot(dy, b, ds, input_precision=DOT_PRECISION)
        if with_db:  # a runtime branch: one loop body for all tiles keeps shared memory to one pipeline
            db = tl.dot(tl.trans(dy), s_tile, input_precision=DOT_PRECISION)
            tl.atomic_add(db_ptrs, db * scaling, mask=n_ok[:, None] & rank_ok[None, :], sem="relaxed")
        dy_ptrs += BLOCK_N * stride_dyn
        w_ptrs += BLOCK_N * stride_wn
        b_ptrs += BLOCK_N * stride_bn
        db_ptrs += BLOCK_N * R_PAD
    return acc, ds * scaling


@triton.jit
def _write_tile(ptrs, value, mask, ADD: tl.constexpr):
    """Store ``value`` into the ``dX`` tile, or (``ADD``) add it to what this program stored there."""
    if ADD:
        tl.debug_barrier()  # the earlier store may have come from other threads of this program
        value += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=BACKWARD_CONFIGS,
    key=["M_BUCKET", "N_TOTAL", "K", "R_PAD", "NUM_SEGMENTS", "DROPOUT", "COMPUTE_DX"],
    prune_configs_by={"early_config_prune": prune_for_platform},
    reset_to_zero=["da_ptr", "db_ptr"],
)
@triton.jit
def _lora_backward_kernel(
    dy_ptrs, dy_strides_m, dy_strides_n, x_ptr, stride_xm, stride_xk, w_ptrs, w_strides_n, w_strides_k,
    a_ptrs, a_strides_r, a_strides_k, b_ptrs, b_strides_n, b_strides_r, s_ptr, stride_sm,
    dx_ptr, stride_dxm, stride_dxk, da_ptr, db_ptr, db_row0s, scalings, seeds, dropout_p, n_sizes, ranks,
    M, K, M_BUCKET, N_TOTAL,
    NUM_SEGMENTS: tl.constexpr, DROPOUT: tl.constexpr, COMPUTE_DX: tl.constexpr, R_PAD: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Fused LoRA backward: one ``dX`` tile per program, summed over all segments."""
    pid_m, pid_k = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rank_ids = tl.arange(0, R_PAD)
    cols_wrapped = (cols % K).to(tl.int64)  # columns past K repeat real ones; never stored, masked for dA
    in_tile = (rows[:, None] < M) & (cols[None, :] < K)
    dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * stride_dxm + cols.to(tl.int64)[None, :] * stride_dxk
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols.to(tl.int64)[None, :] * stride_xk
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for i in tl.static_range(NUM_SEGMENTS):
        rank_ok = rank_ids < ranks[i]
        acc, ds = _stream_grad_output(
            acc, rows, cols_wrapped, pid_k == 0, dy_ptrs[i], dy_strides_m[i], dy_strides_n[i],
            w_ptrs[i], w_strides_n[i], w_strides_k[i], b_ptrs[i], b_strides_n[i], b_strides_r[i],
            s_ptr, stride_sm, i * R_PAD, db_ptr, db_row0s[i], scalings[i], M, n_sizes[i], ranks[i],
            COMPUTE_DX, R_PAD, COMPUTE_DTYPE, DOT_PRECISION, BLOCK_N,
        )  # fmt: skip
        ds = ds.to(COMPUTE_DTYPE)
        if COMPUTE_DX:
            a = tl.load(
                a_ptrs[i] + rank_ids[:, None] * a_strides_r[i] + cols_wrapped[None, :] * a_strides_k[i],
                mask=rank_ok[:, None],
                other=0.0,
            ).to(COMPUTE_DTYPE)
        if DROPOUT and COMPUTE_DX:
            # The masked rank-r term below needs a second accumulator tile: flush this one through the
            # (L2-resident) dX tile first so the two never occupy registers together.
            _write_tile(dx_ptrs, acc, in_tile, ADD=i > 0)
            acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        x = tl.load(x_ptrs, mask=in_tile, other=0.0).to(COMPUTE_DTYPE)
        if DROPOUT:
            inv_keep = 1.0 / (1.0 - dropout_p)
            keep = keep_mask(seeds[i], rows, pid_k * BLOCK_K, K, dropout_p, BLOCK_K)
            x = tl.where(keep, x, 0.0).to(COMPUTE_DTYPE)
            da = tl.dot(tl.trans(x), ds, input_precision=DOT_PRECISION) * inv_keep
        else:
            da = tl.dot(tl.trans(x), ds, input_precision=DOT_PRECISION)
        # dA is [segments * R_PAD, K] fp32; segment i owns rows i*R_PAD onwards (the layout of S's columns).
        da_ptrs = da_ptr + (i * R_PAD + rank_ids.to(tl.int64))[None, :] * K + cols.to(tl.int64)[:, None]
        tl.atomic_add(da_ptrs, da, mask=(cols[:, None] < K) & rank_ok[None, :], sem="relaxed")
        if COMPUTE_DX:
            if DROPOUT:
                lora = tl.dot(ds, a, input_precision=DOT_PRECISION)
                _write_tile(dx_ptrs, tl.where(keep, lora * inv_keep, 0.0), in_tile, ADD=True)
            else:
                acc = tl.dot(ds, a, acc, input_precision=DOT_PRECISION)
    if COMPUTE_DX and not DROPOUT:
        _write_tile(dx_ptrs, acc, in_tile, ADD=False)


def lora_backward(
    grad_outputs: Sequence[torch.Tensor],
    x2d: torch.Tensor,
    weights: Sequence[torch.Tensor],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    s_cat: torch.Tensor,
    scalings: Sequence[float],
    dropout_p: float,
    seeds: Sequence[int],
    compute_dx: bool,
) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]:
    """Launch the backward kernel; returns ``(dX or None, [dA_i], [dB_i])`` in the inputs' dtypes.

    ``s_cat`` is the ``S`` that ``lora_forward`` returned; ``seeds`` must be the forward's seeds.
    """
    num_rows, num_features = x2d.shape
    num_segments = len(weights)
    r_pad = s_cat.shape[1] // num_segments
    device = x2d.device
    n_sizes = tuple(w.shape[0] for w in weights)
    db_row0s = tuple(sum(n_sizes[:i]) for i in range(num_segments))
    grad_a = torch.zeros((num_segments * r_pad, num_features), dtype=torch.float32, device=device)
    grad_b = torch.zeros((sum(n_sizes), r_pad), dtype=torch.float32, device=device)
    grad_x = torch.empty_like(x2d, memory_format=torch.contiguous_format) if compute_dx else x2d

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(num_rows, meta["BLOCK_M"]) * triton.cdiv(num_features, meta["BLOCK_K"]),)

    _lora_backward_kernel[grid](
        tuple(grad_outputs),
        tuple(g.stride(0) for g in grad_outputs),
        tuple(g.stride(1) for g in grad_outputs),
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
        s_cat,
        s_cat.stride(0),
        grad_x,
        grad_x.stride(0),
        grad_x.stride(1),
        grad_a,
        grad_b,
        db_row0s,
        tuple(float(s) for s in scalings),
        tuple(seeds),
        float(dropout_p),
        n_sizes,
        tuple(a.shape[0] for a in lora_As),
        num_rows,
        num_features,
        size_bucket(num_rows),
        sum(n_sizes),
        NUM_SEGMENTS=num_segments,
        DROPOUT=dropout_p > 0.0,
        COMPUTE_DX=compute_dx,
        R_PAD=r_pad,
        COMPUTE_DTYPE=compute_dtype(x2d.dtype),
        DOT_PRECISION=dot_input_precision(x2d.dtype),
    )
    grads_a = [grad_a[i * r_pad : i * r_pad + a.shape[0]].to(a.dtype) for i, a in enumerate(lora_As)]
    grads_b = [
        grad_b[row0 : row0 + b.shape[0], : b.shape[1]].to(b.dtype).contiguous()
        for row0, b in zip(db_row0s, lora_Bs, strict=True)
    ]
    return (grad_x if compute_dx else None), grads_a, grads_b
