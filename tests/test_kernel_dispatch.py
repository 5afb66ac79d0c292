"""Backend choice (auto / triton / torch), input checks and autocast handling of ``peftlab.kernels``."""

from __future__ import annotations

import peftlab.kernels as kernels
import pytest
import torch
from peftlab.kernels.reference import lora_linear_reference
from test_kernel_lora_linear import DEVICE, make_layer, ran_fused_kernel, relative_error


def layer_args(out_features: int = 20, in_features: int = 24, rank: int = 8) -> tuple:
    layer = make_layer(in_features, out_features, rank, torch.float32, bias=True)
    return (
        torch.randn(2, 9, in_features, device=DEVICE),
        layer.weight,
        layer.bias,
        layer.lora_A,
        layer.lora_B,
        layer.scaling,
    )


def test_unknown_backend_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'cuda' is not one of 'auto', 'triton', 'torch'"):
        kernels.lora_linear(*layer_args(), backend="cuda")
    assert kernels.validate_backend("triton") == "triton"


def test_torch_backend_and_auto_on_cpu_use_the_reference() -> None:
    torch.manual_seed(0)
    args = layer_args()
    want = lora_linear_reference(*args)
    got = kernels.lora_linear(*args, backend="torch")
    assert torch.equal(got, want) and not ran_fused_kernel(got)
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    got = kernels.lora_linear(*cpu_args, backend="auto")
    assert torch.equal(got, lora_linear_reference(*cpu_args)) and not ran_fused_kernel(got)


def test_triton_backend_runs_the_fused_kernel_and_keeps_the_entry_point() -> None:
    torch.manual_seed(1)
    args = layer_args()
    got = kernels.lora_linear(*args, backend="triton")
    assert ran_fused_kernel(got)
    assert relative_error(got, lora_linear_reference(*args).double()) < 1e-5
    assert callable(kernels.lora_linear)  # importing kernel modules must not shadow the function


def test_triton_without_cuda_or_interpreter_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in layer_args()]
    with pytest.raises(ValueError, match="TRITON_INTERPRET") as error:
        kernels.lora_linear(*cpu_args, backend="triton")
    assert "kernel='auto' or 'torch'" in str(error.value)
    got = kernels.lora_linear(*cpu_args, backend="auto")  # auto falls back quietly
    assert not ran_fused_kernel(got)


def test_unsupported_inputs_are_explained() -> None:
    x, weight, bias, lora_A, lora_B, _ = layer_args()
    reason = kernels.triton_unsupported_reason
    assert "float64" in reason(x.double(), [weight.double()], [None], [lora_A], [lora_B])
    assert "dtype differs" in reason(x, [weight.half()], [None], [lora_A], [lora_B])
    big_rank = torch.zeros(200, x.shape[-1], device=DEVICE)
    assert "rank 200" in reason(
        x, [weight], [bias], [big_rank], [torch.zeros(weight.shape[0], 200, device=DEVICE)]
    )
    assert "requires grad" in reason(x, [weight.clone().requires_grad_()], [bias], [lora_A], [lora_B])
    assert reason(x, [weight], [bias], [lora_A], [lora_B]) is None
    with pytest.raises(ValueError, match="weight requires grad"):
        kernels.lora_linear(x, weight.clone().requires_grad_(), bias, lora_A, lora_B, 1.0, backend="triton")


def test_bad_shapes_and_dropout_are_rejected_before_any_compute() -> None:
    x, weight, bias, lora_A, lora_B, scaling = layer_args()
    with pytest.raises(ValueError, match=r"lora_A must be \(r, in=24\)"):
        kernels.lora_linear(x, weight, bias, lora_A.t(), lora_B, scaling)
    with pytest.raises(ValueError, match=r"weight must be \(out, in=24\)"):
        kernels.lora_linear(x, weight.t(), bias, lora_A, lora_B, scaling)
    with pytest.raises(ValueError, match=r"bias must be \(out=20,\)"):
        kernels.lora_linear(x, weight, bias[:3], lora_A, lora_B, scaling)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        kernels.lora_linear(x, weight, bias, lora_A, lora_B, scaling, dropout_p=1.0, training=True)


def test_empty_batch_returns_an_empty_output_on_every_backend() -> None:
    _, weight, bias, lora_A, lora_B, scaling = layer_args()
    for backend in ("torch", "triton"):
        out = kernels.lora_linear(
            torch.randn(0, 24, device=DEVICE), weight, bias, lora_A, lora_B, scaling, backend=backend
        )
        assert out.shape == (0, 20)


def test_autocast_runs_the_kernel_in_the_autocast_dtype() -> None:
    """Under bf16 autocast the Triton path casts x and W like F.linear does and returns bf16."""
    torch.manual_seed(2)
    x, weight, bias, lora_A, lora_B, scaling = layer_args()
    lora_A.grad = None
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = kernels.lora_linear(x, weight, bias, lora_A, lora_B, scaling, backend="triton")
        want_dtype = kernels.lora_linear(x, weight, bias, lora_A, lora_B, scaling, backend="torch").dtype
    assert got.dtype == want_dtype == torch.bfloat16
    want = lora_linear_reference(
        x.bfloat16().double(),
        weight.bfloat16().double(),
        bias.bfloat16().double(),
        lora_A.double(),
        lora_B.double(),
        scaling,
    )
    assert relative_error(got, want) < 1e-2
    got.float().sum().backward()
    assert lora_A.grad is not None and lora_A.grad.dtype == torch.float32


# A few projections per model keep the interpreter quick: GQA k/v, the MLP down projection, GPT-2's fused
# q/k/v Conv1D (with bias) and both of its c_proj shapes.
TARGETS = {"tiny-llama": ["k_proj", "o_proj", "down_proj"], "tiny-gpt2": ["c_attn", "c_proj"]}


@pytest.mark.parametrize("preset", TARGETS)
def test_lora_layers_with_triton_kernel_match_torch_kernel(preset: str) -> None:
    """A whole model with ``LoRAConfig(kernel="triton")`` (GPT-2: Conv1D's transposed weight view)."""
    import peftlab
    from peftlab.methods.lora import lora_layers
    from peftlab.models import build_model

    models = {}
    for backend in ("torch", "triton"):
        config = peftlab.LoRAConfig(r=8, alpha=16, target_modules=TARGETS[preset], kernel=backend)
        models[backend] = peftlab.apply(build_model(preset, seed=0).to(DEVICE), config)
    torch.manual_seed(0)
    for layer in lora_layers(models["torch"]).values():
        torch.nn.init.normal_(layer.lora_B)  # B starts at zero; make the adapter matter
    models["triton"].load_state_dict(models["torch"].state_dict())
    ids = torch.randint(0, 512, (2, 9), device=DEVICE)
    losses = {}
    for backend, model in models.items():
        torch.manual_seed(1)  # GPT-2's own dropout layers draw the same masks in both runs
        losses[backend] = model(input_ids=ids, labels=ids).loss
        losses[backend].backward()
    assert relative_error(losses["triton"], losses["torch"].double()) < 1e-5
    torch_layers, triton_layers = lora_layers(models["torch"]), lora_layers(models["triton"])
    assert len(triton_layers) >= 4
    for name, layer in triton_layers.items():
        for param in ("lora_A", "lora_B"):
            want = getattr(torch_layers[name], param).grad.double()
            assert relative_error(getattr(layer, param).grad, want) < 1e-4, f"{name}.{param}"
