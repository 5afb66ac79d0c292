"""Fused LoRA over layers sharing one input (q/k/v, gate/up) against the float64 oracle, per layer."""

from __future__ import annotations

import peftlab.kernels as kernels
import pytest
import torch
from test_kernel_lora_linear import DEVICE, TOLERANCE, assert_matches_oracle, make_layer, ran_fused_kernel


def run_shared(
    leading: tuple[int, ...],
    in_features: int,
    layer_specs: list[tuple[int, int, bool]],
    dtype: torch.dtype,
    dropout_p: float,
    device: str = DEVICE,
) -> None:
    """Layers ``(out, rank, bias)`` on one input, forward + backward, checked layer by layer."""
    from peftlab.kernels.lora_shared_input import triton_lora_linear_shared_input

    layers = [
        make_layer(in_features, out, rank, dtype, bias, scaling=0.5 + i, device=device)
        for i, (out, rank, bias) in enumerate(layer_specs)
    ]
    x = torch.randn(*leading, in_features, device=device).to(dtype).requires_grad_()
    seeds = [101, 202, 303][: len(layers)]
    outputs = triton_lora_linear_shared_input(
        x,
        [layer.weight for layer in layers],
        [layer.bias for layer in layers],
        [layer.lora_A for layer in layers],
        [layer.lora_B for layer in layers],
        [layer.scaling for layer in layers],
        dropout_p,
        training=True,
        seeds=seeds,
    )
    grads = [torch.randn_like(y) for y in outputs]
    torch.autograd.backward(outputs, grads)
    assert_matches_oracle(x, layers, outputs, grads, dropout_p, seeds, TOLERANCE[dtype])


@pytest.mark.parametrize("dropout_p", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_qkv_with_gqa_sizes_ranks_and_biases_matches_reference(dropout_p: float) -> None:
    """q (wide), k and v (narrow, GQA) with different ranks, scalings and only some biases."""
    torch.manual_seed(0)
    run_shared((2, 15), 40, [(40, 8, True), (16, 24, False), (16, 8, True)], torch.float32, dropout_p)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_gate_up_bf16_matches_reference(dropout_p: float) -> None:
    torch.manual_seed(1)
    run_shared((33,), 32, [(45, 16, False), (45, 16, False)], torch.bfloat16, dropout_p)


def test_shared_input_equals_separate_layers_without_dropout() -> None:
    """The fused launch gives what one ``lora_linear`` per layer gives."""
    torch.manual_seed(2)
    layers = [make_layer(24, out, 8, torch.float32, bias=True) for out in (24, 16)]
    x = torch.randn(21, 24, device=DEVICE)
    fused = kernels.lora_linear_shared_input(
        x,
        [layer.weight for layer in layers],
        [layer.bias for layer in layers],
        [layer.lora_A for layer in layers],
        [layer.lora_B for layer in layers],
        [layer.scaling for layer in layers],
        backend="triton",
    )
    assert all(ran_fused_kernel(y) for y in fused)
    for layer, y in zip(layers, fused, strict=True):
        separate = kernels.lora_linear(
            x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scaling, backend="torch"
        )
        torch.testing.assert_close(y, separate, rtol=1e-5, atol=1e-5)


def test_layers_draw_independent_dropout_masks() -> None:
    """Each layer keeps a different subset of the input, as separate PEFT layers would."""
    torch.manual_seed(3)
    layers = [make_layer(32, 16, 8, torch.float32, bias=False) for _ in range(2)]
    layers[1].weight, layers[1].lora_A, layers[1].lora_B = (
        layers[0].weight,
        layers[0].lora_A,
        layers[0].lora_B,
    )
    x = torch.randn(20, 32, device=DEVICE)
    first, second = kernels.lora_linear_shared_input(
        x,
        [layer.weight for layer in layers],
        [None, None],
        [layer.lora_A for layer in layers],
        [layer.lora_B for layer in layers],
        [1.0, 1.0],
        dropout_p=0.5,
        training=True,
        backend="triton",
    )
    assert not torch.allclose(first, second)  # identical layers, different masks


def test_mismatched_layer_lists_are_rejected() -> None:
    layer = make_layer(16, 16, 8, torch.float32, bias=False)
    with pytest.raises(ValueError, match="one entry per layer"):
        kernels.lora_linear_shared_input(
            torch.randn(4, 16), [layer.weight] * 2, [None], [layer.lora_A] * 2, [layer.lora_B] * 2, [1.0, 1.0]
        )
    with pytest.raises(ValueError, match="1 to 4 layers"):
        kernels.lora_linear_shared_input(
            torch.randn(4, 16),
            [layer.weight] * 5,
            [None] * 5,
            [layer.lora_A] * 5,
            [layer.lora_B] * 5,
            [1.0] * 5,
        )
    with pytest.raises(ValueError, match="layer 1: lora_B"):
        kernels.lora_linear_shared_input(
            torch.randn(4, 16),
            [layer.weight] * 2,
            [None] * 2,
            [layer.lora_A] * 2,
            [layer.lora_B, layer.lora_B.t()],
            [1.0] * 2,
        )


@pytest.mark.cuda
@pytest.mark.parametrize("dropout_p", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_cuda_llama_qkv_bf16_matches_reference(dropout_p: float) -> None:
    """Llama-style q/k/v (GQA: k/v a quarter of q) at r=16 in bf16 on the GPU."""
    torch.manual_seed(0)
    run_shared(
        (2, 512),
        1024,
        [(1024, 16, False), (256, 16, False), (256, 16, False)],
        torch.bfloat16,
        dropout_p,
        "cuda",
    )
