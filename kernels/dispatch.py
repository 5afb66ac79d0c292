"""Choosing between the fused Triton kernels and the PyTorch reference, and checking inputs first.

``LoRAConfig(kernel=...)`` reaches here as ``backend``:

* ``"torch"``: always the reference (``peftlab.kernels.reference``).
* ``"triton"``: always the fused kernels; raises ``ValueError`` saying why when they cannot run
  (no CUDA and no ``TRITON_INTERPRET=1``, unsupported dtype, rank above 128, a weight that trains).
* ``"auto"``: the fused kernels for CUDA tensors they support, the reference otherwise (CPU tensors
  use the reference even under the interpreter, which is a testing tool).

Under autocast the Triton path casts ``x``, ``W`` and the bias to the autocast dtype first, as
``F.linear`` would; the adapter weights stay in their own dtype and are cast tile by tile in-kernel.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

from .reference import lora_linear_reference, lora_linear_shared_input_reference
from .triton_support import (
    MAX_TRITON_RANK,
    SUPPORTED_INPUT_DTYPES,
    device_runs_triton,
    is_interpreting,
    triton_is_installed,
)

KERNEL_BACKENDS = ("auto", "triton", "torch")
# Layers that share one input in a transformer block: q/k/v (3) or gate/up (2); a few spare.
MAX_SHARED_INPUT_LAYERS = 4


def validate_backend(backend: str) -> str:
    """Return ``backend`` if it names a kernel backend; raise ``ValueError`` listing the choices otherwise."""
    if backend not in KERNEL_BACKENDS:
        choices = ", ".join(repr(b) for b in KERNEL_BACKENDS)
        raise ValueError(f"LoRA kernel backend {backend!r} is not one of {choices}")
    return backend


def _check_dropout(dropout_p: float) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1); got {dropout_p}")


def _check_layer(
    index: int,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
) -> None:
    """Raise ``ValueError`` naming the tensor whose shape does not fit a LoRA linear on ``x``."""
    where = f"layer {index}: " if index >= 0 else ""
    if x.dim() < 1:
        raise ValueError(f"{where}x must have a feature dimension; got a 0-d tensor")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{where}weight must be (out, in={x.shape[-1]}) to match x {tuple(x.shape)}; got {tuple(weight.shape)}"
        )
    out_features, in_features = weight.shape
    if lora_A.dim() != 2 or lora_A.shape[1] != in_features or lora_A.shape[0] < 1:
        raise ValueError(
            f"{where}lora_A must be (r, in={in_features}) with r >= 1; got {tuple(lora_A.shape)}"
        )
    rank = lora_A.shape[0]
    if lora_B.shape != (out_features, rank):
        raise ValueError(f"{where}lora_B must be (out={out_features}, r={rank}); got {tuple(lora_B.shape)}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"{where}bias must be (out={out_features},); got {tuple(bias.shape)}")
    if not math.isfinite(scaling):
        raise ValueError(f"{where}scaling must be a finite number; got {scaling}")


def _kernels_built_for_other_mode() -> bool:
    """True when the kernel modules were imported under a different ``TRITON_INTERPRET`` than now."""
    forward = sys.modules.get(f"{__package__}.lora_forward")
    return forward is not None and is_interpreting() != forward.BUILT_FOR_INTERPRETER


def triton_unsupported_reason(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
) -> str | None:
    """Why the fused kernels cannot take these (already autocast) inputs, or ``None`` when they can."""
    if not triton_is_installed():
        return "the 'triton' package is not installed"
    if not device_runs_triton(x.device):
        if x.device.type == "cpu":
            return (
                "tensors are on the CPU and TRITON_INTERPRET is not set; use a CUDA device, or set "
                "TRITON_INTERPRET=1 before the first kernel call to run the kernels in Triton's (slow) CPU "
                "interpreter"
            )
        if x.device.type == "cuda":
            return (
                "TRITON_INTERPRET is set, so the kernels run in the CPU interpreter and take CPU tensors only"
            )
        return f"tensors are on {x.device}; the kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1)"
    if _kernels_built_for_other_mode():
        return "TRITON_INTERPRET changed after the kernels were first used; set it before the first call"
    if x.dtype not in SUPPORTED_INPUT_DTYPES:
        return f"x has dtype {x.dtype}; the kernels take float16, bfloat16 or float32"
    for i, (w, b, a, b_up) in enumerate(zip(weights, biases, lora_As, lora_Bs, strict=True)):
        tensors = {"weight": w, "bias": b, "lora_A": a, "lora_B": b_up}
        for name, tensor in tensors.items():
            if tensor is not None and tensor.device != x.device:
                return f"layer {i} {name} is on {tensor.device} but x is on {x.device}"
        if w.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
            return f"layer {i} weight/bias dtype differs from x's {x.dtype}"
        if a.dtype not in SUPPORTED_INPUT_DTYPES or b_up.dtype not in SUPPORTED_INPUT_DTYPES:
            return f"layer {i} adapter dtype {a.dtype}/{b_up.dtype} is not float16, bfloat16 or float32"
        if a.shape[0] > MAX_TRITON_RANK:
            return f"layer {i} rank {a.shape[0]} is above the kernels' maximum of {MAX_TRITON_RANK}"
        if w.requires_grad:
            return f"layer {i} weight requires grad; the kernels treat W as frozen and give it no gradient"
    return None


def _is_empty(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> bool:
    return x.numel() == 0 or any(w.numel() == 0 for w in weights)


def _autocast_inputs(
    x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
    """Cast ``x``, weights and biases to the autocast dtype when autocast is on (as ``F.linear`` does)."""
    device_type = x.device.type
    if x.dtype not in SUPPORTED_INPUT_DTYPES or not torch.is_autocast_enabled(device_type):
        return x, list(weights), list(biases)
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), [w.to(dtype) for w in weights], [None if b is None else b.to(dtype) for b in biases]


def _use_triton(
    backend: str,
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
) -> bool:
    if backend == "torch" or _is_empty(x, weights):
        return False
    if backend == "auto" and x.device.type != "cuda":
        return False
    reason = triton_unsupported_reason(x, weights, biases, lora_As, lora_Bs)
    if reason is not None and backend == "triton":
        raise ValueError(
            f"LoRA kernel backend 'triton' cannot run: {reason} (or set kernel='auto' or 'torch')"
        )
    return reason is None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """LoRA linear ``x·Wᵀ (+ bias) + scaling·dropout(x)·Aᵀ·Bᵀ`` with ``W`` frozen.

    ``weight`` is (out, in) with any strides (a GPT-2 Conv1D weight's transposed view works), ``lora_A``
    (r, in), ``lora_B`` (out, r); ``x`` has any leading dims. The adapter branch runs in the adapter's
    dtype on the reference path (on the Triton path its tiles are cast to ``x``'s dtype for the tensor
    cores, fp32 accumulation) and the result has ``x``'s dtype. Dropout applies only when ``training``.
    """
    validate_backend(backend)
    _check_dropout(dropout_p)
    _check_layer(-1, x, weight, bias, lora_A, lora_B, scaling)
    cast_x, (cast_w,), (cast_b,) = _autocast_inputs(x, [weight], [bias])
    if _use_triton(backend, cast_x, [cast_w], [cast_b], [lora_A], [lora_B]):
        from .lora_function import triton_lora_linear

        return triton_lora_linear(cast_x, cast_w, cast_b, lora_A, lora_B, scaling, dropout_p, training)
    return lora_linear_reference(x, weight, bias, lora_A, lora_B, scaling, dropout_p, training)


def lora_linear_shared_input(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    lora_As: Sequence[torch.Tensor],
    lora_Bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """LoRA linears that read the same ``x`` (q/k/v, gate/up) in one fused launch; one output per layer.

    Equals ``tuple(lora_linear(x, weights[i], biases[i], lora_As[i], lora_Bs[i], scalings[i], ...))``
    (each layer draws its own dropout mask), but the Triton path reads ``x`` once for all layers:
    one forward launch writes every output (plus one ``dropout(X)·Aᵢᵀ`` pass when dropout is on) and one
    backward launch sums ``dX`` over the layers. Layers may differ in output size, rank, scaling and bias.
    """
    validate_backend(backend)
    _check_dropout(dropout_p)
    lengths = {len(weights), len(biases), len(lora_As), len(lora_Bs), len(scalings)}
    if len(lengths) != 1:
        raise ValueError(
            "weights, biases, lora_As, lora_Bs and scalings must have one entry per layer; got lengths "
            f"{len(weights)}, {len(biases)}, {len(lora_As)}, {len(lora_Bs)}, {len(scalings)}"
        )
    if not 1 <= len(weights) <= MAX_SHARED_INPUT_LAYERS:
        raise ValueError(
            f"lora_linear_shared_input takes 1 to {MAX_SHARED_INPUT_LAYERS} layers; got {len(weights)}"
        )
    for i, (w, b, a, b_up, s) in enumerate(zip(weights, biases, lora_As, lora_Bs, scalings, strict=True)):
        _check_layer(i, x, w, b, a, b_up, s)
    cast_x, cast_ws, cast_bs = _autocast_inputs(x, weights, biases)
    if _use_triton(backend, cast_x, cast_ws, cast_bs, lora_As, lora_Bs):
        from .lora_shared_input import triton_lora_linear_shared_input

        return triton_lora_linear_shared_input(
            cast_x, cast_ws, cast_bs, lora_As, lora_Bs, scalings, dropout_p, training
        )
    return lora_linear_shared_input_reference(
        x, weights, biases, lora_As, lora_Bs, scalings, dropout_p, training
    )
