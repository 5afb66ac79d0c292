"""LoRA compute kernels: fused Triton kernels and their pure-PyTorch reference (installed as ``peftlab.kernels``).

``lora_linear`` is the single entry point the LoRA layers call:
``Y = X·Wᵀ (+ bias) + scaling · dropout(X)·Aᵀ·Bᵀ`` with ``W`` frozen; ``backend`` ("auto", "triton",
"torch") picks the implementation (see ``dispatch.py``). ``lora_linear_shared_input`` runs several
adapted layers that read the same input (q/k/v, gate/up) in one fused launch.

Triton is imported only when a Triton path runs, so ``import peftlab.kernels`` stays cheap and works
where Triton is not installed.
"""

from .dispatch import (
    KERNEL_BACKENDS,
    MAX_SHARED_INPUT_LAYERS,
    lora_linear,
    lora_linear_shared_input,
    triton_unsupported_reason,
    validate_backend,
)
from .reference import lora_linear_reference, lora_linear_shared_input_reference

__all__ = [
    "KERNEL_BACKENDS",
    "MAX_SHARED_INPUT_LAYERS",
    "lora_linear",
    "lora_linear_reference",
    "lora_linear_shared_input",
    "lora_linear_shared_input_reference",
    "triton_unsupported_reason",
    "validate_backend",
]
