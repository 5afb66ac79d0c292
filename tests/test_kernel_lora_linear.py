"""Fused Triton LoRA linear against a float64 PyTorch oracle: output and every gradient.

Without a GPU the kernels run in Triton's CPU interpreter (``conftest.py`` sets ``TRITON_INTERPRET=1``),
so the interpreted shapes are tiny but ragged (several tiles per dimension, partial edge tiles).
Tests marked ``cuda`` rerun the comparison on the GPU with autotuned tiles and bf16/fp16 tensor cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import peftlab.kernels as kernels
import pytest
import torch
from peftlab.kernels.reference import lora_linear_reference

# Small-shape tests run on the GPU when there is one, in the interpreter otherwise.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative Frobenius-norm error bounds vs float64 (the numerics targets).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got - want‖ / ‖want‖`` in float64."""
    return ((got.double() - want).norm() / want.norm()).item()


@dataclass
class Layer:
    """One adapted linear's tensors: frozen ``weight``/``bias`` and trainable fp32 ``lora_A``/``lora_B``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float


def make_layer(
    in_features: int,
    out_features: int,
    rank: int,
    dtype: torch.dtype,
    bias: bool,
    scaling: float = 1.5,
    device: str = DEVICE,
    transposed_storage: bool = False,
) -> Layer:
    """Random layer whose base and adapter terms have similar magnitude (so both are checked).

    ``transposed_storage`` stores ``W`` and ``A`` as (in, out)/(in, r) and hands out transposed views,
    like GPT-2's ``Conv1D``: non-contiguous operands.
    """
    if transposed_storage:
        weight = torch.randn(in_features, out_features, device=device).t()
        lora_A = torch.randn(in_features, rank, device=device).t() / in_features**0.5
    else:
        weight = torch.randn(out_features, in_features, device=device)
        lora_A = torch.randn(rank, in_features, device=device) / in_features**0.5
    weight = (weight / in_features**0.5).to(dtype)
    lora_B = torch.randn(out_features, rank, device=device) / rank**0.5
    bias_tensor = torch.randn(out_features, device=device).to(dtype) if bias else None
    return Layer(weight, bias_tensor, lora_A.requires_grad_(), lora_B.requires_grad_(), scaling)


def float64_oracle(
    x: torch.Tensor,
    layers: Sequence[Layer],
    grad_outputs: Sequence[torch.Tensor],
    dropout_p: float,
    keep_masks: Sequence[torch.Tensor | None],
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Outputs, dX (summed over layers), dA_i and dB_i of the reference in float64, given the masks."""
    x64 = x.detach().double().requires_grad_()
    a64 = [layer.lora_A.detach().double().requires_grad_() for layer in layers]
    b64 = [layer.lora_B.detach().double().requires_grad_() for layer in layers]
    outputs = []
    for layer, a, b, mask in zip(layers, a64, b64, keep_masks, strict=True):
        bias = None if layer.bias is None else layer.bias.double()
        outputs.append(
            lora_linear_reference(
                x64, layer.weight.double(), bias, a, b, layer.scaling, dropout_p, keep_mask=mask
            )
        )
    torch.autograd.backward(outputs, [g.double() for g in grad_outputs])
    return outputs, x64.grad, [a.grad for a in a64], [b.grad for b in b64]


def ran_fused_kernel(output: torch.Tensor) -> bool:
    """True when ``output`` was produced by the Triton autograd function (found in its graph)."""
    pending, seen = [output.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "LoRALinearFunction" in node.name():
            return True
        pending += [next_node for next_node, _ in node.next_functions]
    return False


def keep_mask_for(seed: int, x: torch.Tensor, dropout_p: float) -> torch.Tensor | None:
    """The mask the kernels regenerate from ``seed`` for input ``x`` (``None`` without dropout)."""
    if dropout_p == 0.0:
        return None
    from peftlab.kernels.dropout import dropout_keep_mask

    return dropout_keep_mask(seed, tuple(x.shape), dropout_p, x.device)


def assert_matches_oracle(
    x: torch.Tensor,
    layers: Sequence[Layer],
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    dropout_p: float,
    seeds: Sequence[int],
    tolerance: float,
) -> None:
    """Compare outputs and dX/dA/dB (already backpropagated) with the float64 oracle."""
    masks = [keep_mask_for(seed, x, dropout_p) for seed in seeds]
    want_y, want_dx, want_da, want_db = float64_oracle(x, layers, grad_outputs, dropout_p, masks)
    for i, (layer, got_y) in enumerate(zip(layers, outputs, strict=True)):
        assert got_y.dtype == x.dtype and got_y.shape == want_y[i].shape
        assert relative_error(got_y, want_y[i]) < tolerance, f"layer {i} Y"
        assert relative_error(layer.lora_A.grad, want_da[i]) < tolerance, f"layer {i} dA"
        assert relative_error(layer.lora_B.grad, want_db[i]) < tolerance, f"layer {i} dB"
        assert layer.lora_A.grad.dtype == layer.lora_A.dtype
        assert layer.weight.grad is None  # W is frozen
        assert layer.bias is None or layer.bias.grad is None  # so is a bias that does not require grad
    assert x.grad.dtype == x.dtype
    assert relative_error(x.grad, want_dx) < tolerance, "dX"


def run_single(
    leading: tuple[int, ...],
    in_features: int,
    out_features: int,
    rank: int,
    dtype: torch.dtype,
    bias: bool,
    dropout_p: float,
    device: str = DEVICE,
    transposed_storage: bool = False,
) -> None:
    """One fused LoRA linear, forward + backward, checked against the oracle."""
    from peftlab.kernels.lora_function import triton_lora_linear

    layer = make_layer(
        in_features, out_features, rank, dtype, bias, device=device, transposed_storage=transposed_storage
    )
    x = torch.randn(*leading, in_features, device=device).to(dtype).requires_grad_()
    seed = 1234
    y = triton_lora_linear(
        x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling, dropout_p, True, seed=seed
    )
    grad_y = torch.randn(out_features, *leading, device=device).movedim(0, -1).to(dtype)  # non-contiguous dY
    y.backward(grad_y)
    assert_matches_oracle(x, [layer], [y], [grad_y], dropout_p, [seed], TOLERANCE[dtype])


# leading dims, in, out, rank, dtype, bias — M/N/K ragged against the interpreter's 16-wide tiles.
INTERPRETED_CASES = {
    "fp32-2d-r8-bias": ((37,), 45, 29, 8, torch.float32, True),
    "fp32-3d-r24": ((2, 19), 40, 48, 24, torch.float32, False),
    "fp32-r16-narrow-in": ((33,), 17, 35, 16, torch.float32, True),
    "bf16-3d-r8-bias": ((2, 17), 48, 40, 8, torch.bfloat16, True),
    "bf16-r24": ((40,), 33, 47, 24, torch.bfloat16, False),
    "fp16-r8": ((25,), 32, 20, 8, torch.float16, True),
}


@pytest.mark.parametrize("dropout_p", [0.0, 0.25], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("case", INTERPRETED_CASES.values(), ids=INTERPRETED_CASES.keys())
def test_fused_lora_matches_float64_reference(case: tuple, dropout_p: float) -> None:
    torch.manual_seed(0)
    run_single(*case, dropout_p=dropout_p)


@pytest.mark.parametrize("dropout_p", [0.0, 0.25], ids=["no-dropout", "dropout"])
def test_non_contiguous_input_weight_and_adapter(dropout_p: float) -> None:
    torch.manual_seed(1)
    from peftlab.kernels.lora_function import triton_lora_linear

    layer = make_layer(36, 28, 8, torch.float32, bias=True, scaling=0.7, transposed_storage=True)
    assert not layer.weight.is_contiguous() and not layer.lora_A.is_contiguous()
    x = torch.randn(36, 30, device=DEVICE).t().requires_grad_()  # [30, 36] with strides (1, 30)
    y = triton_lora_linear(
        x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling, dropout_p, True, seed=9
    )
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    assert_matches_oracle(x, [layer], [y], [grad_y], dropout_p, [9], TOLERANCE[torch.float32])


def test_dropout_keep_rate_is_one_minus_p_and_seed_dependent() -> None:
    from peftlab.kernels.dropout import dropout_keep_mask

    mask = dropout_keep_mask(7, (128, 256), 0.3, DEVICE)
    assert abs(mask.float().mean().item() - 0.7) < 0.02  # 7 standard deviations
    # each of the eight draws a Philox call yields decides its own column, independently
    per_draw = mask.float().view(128, 32, 8).mean((0, 1))
    assert (per_draw - 0.7).abs().max() < 0.05
    neighbours_agree = (mask[:, 1:] == mask[:, :-1]).float().mean().item()
    assert abs(neighbours_agree - (0.7**2 + 0.3**2)) < 0.03
    assert torch.equal(mask, dropout_keep_mask(7, (128, 256), 0.3, DEVICE))
    assert (mask != dropout_keep_mask(8, (128, 256), 0.3, DEVICE)).float().mean() > 0.3


def test_dropout_masks_depend_on_logical_position_only() -> None:
    """Same seed gives the same mask for 2-D and 3-D views and for any tile width."""
    from peftlab.kernels.dropout import dropout_keep_mask

    flat = dropout_keep_mask(3, (6, 40), 0.5, DEVICE)
    assert torch.equal(flat, dropout_keep_mask(3, (2, 3, 40), 0.5, DEVICE).reshape(6, 40))
    assert torch.equal(flat, dropout_keep_mask(3, (6, 40), 0.5, DEVICE, block_cols=16))
    assert torch.equal(flat, dropout_keep_mask(3, (6, 40), 0.5, DEVICE, block_cols=8))


def test_seeds_follow_torch_manual_seed_and_dropout_only_in_training() -> None:
    torch.manual_seed(2)
    layer = make_layer(24, 20, 8, torch.float32, bias=False)
    x = torch.randn(18, 24, device=DEVICE)
    args = (x, layer.weight, None, layer.lora_A, layer.lora_B, layer.scaling, 0.5)
    torch.manual_seed(11)
    first = kernels.lora_linear(*args, training=True, backend="triton")
    torch.manual_seed(11)
    again = kernels.lora_linear(*args, training=True, backend="triton")
    assert torch.equal(first, again)
    evaluation = kernels.lora_linear(*args, training=False, backend="triton")
    plain = lora_linear_reference(*args[:6])
    assert relative_error(evaluation, plain.double()) < 1e-6
    assert relative_error(first, plain.double()) > 1e-2  # dropout really acted in training


def test_forward_fold_and_split_strategies_agree() -> None:
    """S folded into the base GEMM and S from the separate shrink kernel give the same Y and S."""
    from peftlab.kernels.lora_forward import lora_forward

    torch.manual_seed(3)
    layer = make_layer(40, 36, 24, torch.float32, bias=True)
    x = torch.randn(35, 40, device=DEVICE)
    args = (
        x,
        [layer.weight],
        [layer.bias],
        [layer.lora_A.detach()],
        [layer.lora_B.detach()],
        [1.5],
        0.0,
        [0],
    )
    (y_fold,), s_fold = lora_forward(*args, fold_shrink=True)
    (y_split,), s_split = lora_forward(*args, fold_shrink=False)
    torch.testing.assert_close(y_fold, y_split, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_fold, s_split, rtol=1e-6, atol=1e-6)
    want_s = x.double() @ layer.lora_A.detach().double().t()
    assert relative_error(s_fold[:, :24], want_s) < 1e-6
    assert torch.count_nonzero(s_fold[:, 24:]) == 0  # rank padding stays zero


def test_trainable_bias_gets_token_sum_and_frozen_weight_gets_none() -> None:
    from peftlab.kernels.lora_function import triton_lora_linear

    torch.manual_seed(4)
    layer = make_layer(20, 24, 8, torch.float32, bias=True)
    layer.bias.requires_grad_()
    x = torch.randn(3, 7, 20, device=DEVICE, requires_grad=True)
    y = triton_lora_linear(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    assert relative_error(layer.bias.grad, grad_y.double().sum((0, 1))) < 1e-6
    assert layer.weight.grad is None


def test_adapter_gradients_when_input_needs_no_gradient() -> None:
    """Frozen embeddings feed the first layer: dX is skipped, dA and dB still come out right."""
    from peftlab.kernels.lora_function import triton_lora_linear

    torch.manual_seed(5)
    layer = make_layer(30, 18, 8, torch.float32, bias=False)
    x = torch.randn(26, 30, device=DEVICE)
    y = triton_lora_linear(
        x, layer.weight, None, layer.lora_A, layer.lora_B, layer.scaling, 0.2, True, seed=3
    )
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    _, _, want_da, want_db = float64_oracle(x, [layer], [grad_y], 0.2, [keep_mask_for(3, x, 0.2)])
    assert relative_error(layer.lora_A.grad, want_da[0]) < 1e-5
    assert relative_error(layer.lora_B.grad, want_db[0]) < 1e-5


# --- on a GPU: autotuned tiles, tensor cores ------------------------------------------------------------

CUDA_CASES = {
    "bf16-r8-ragged": ((1000,), 1024, 768, 8, torch.bfloat16, True),
    "bf16-r16-3d": ((4, 300), 2048, 512, 16, torch.bfloat16, False),
    "bf16-r64": ((2048,), 1024, 1536, 64, torch.bfloat16, False),
    "fp16-r24": ((777,), 768, 640, 24, torch.float16, True),
    "fp32-ieee-r16": ((513,), 512, 384, 16, torch.float32, True),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dropout_p", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("case", CUDA_CASES.values(), ids=CUDA_CASES.keys())
def test_cuda_fused_lora_matches_float64_reference(case: tuple, dropout_p: float) -> None:
    torch.manual_seed(0)
    run_single(*case, dropout_p=dropout_p, device="cuda")


@pytest.mark.cuda
def test_cuda_conv1d_layout_and_auto_backend_picks_triton() -> None:
    torch.manual_seed(1)
    layer = make_layer(768, 2304, 16, torch.bfloat16, bias=True, device="cuda", transposed_storage=True)
    x = torch.randn(2, 256, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert (
        kernels.triton_unsupported_reason(x, [layer.weight], [layer.bias], [layer.lora_A], [layer.lora_B])
        is None
    )
    y = kernels.lora_linear(
        x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling, backend="auto"
    )
    assert ran_fused_kernel(y)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    assert_matches_oracle(x, [layer], [y], [grad_y], 0.0, [0], TOLERANCE[torch.bfloat16])
