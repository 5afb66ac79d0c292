"""LoRA compute kernels: fused Triton kernels and their pure-PyTorch reference (installed as ``peftlab.kernels``).

``lora_linear`` is the single entry point the LoRA layers call:
``Y = X·Wᵀ (+ bias) + scaling · dropout(X)·Aᵀ·Bᵀ`` with ``W`` frozen; ``backend`` ("auto", "triton",
"torch") picks the implementation (see ``dispatch.py``). ``lora_linear_shared_input`` runs several
adapted layers that read the same input (q/k/v, gate/up) in one fused launch.

Triton is imported only when a Triton path runs, so ``import peftlab.kernels`` stays cheap and works
where Triton is not installed.

When Python runs from the repository root, this folder is also visible as the top-level ``kernels``,
the name of Hugging Face's unrelated PyPI package that ``transformers`` (5.25 and newer) imports. Imported
under that name, it loads that package in its place (see ``_hand_over_to_installed_kernels``), so the
repository root shadows nothing.
"""

import sys


def _hand_over_to_installed_kernels() -> bool:
    """Load the installed top-level ``kernels`` package in place of this folder; False if there is none.

    Python's import returns whatever ``sys.modules["kernels"]`` holds once this file has run, so the
    importer gets the installed package. The search skips the folder that holds this one (the repository
    root, however it is spelled on ``sys.path``) and takes only a real package or module, not a bare
    folder of that name.
    """
    import importlib.machinery
    import importlib.util
    import os

    holding_folder = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    elsewhere = [entry for entry in sys.path
                 if isinstance(entry, str) and os.path.realpath(entry or os.curdir) != holding_folder]
    spec = importlib.machinery.PathFinder.find_spec(__name__, elsewhere)
    if spec is None or spec.loader is None or not spec.has_location:
        return False
    installed = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = installed
    spec.loader.exec_module(installed)
    return True


if __name__ != "kernels" or not _hand_over_to_installed_kernels():
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
