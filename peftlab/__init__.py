"""peftlab: hand-written parameter-efficient fine-tuning for Hugging Face ``transformers`` models."""

from peftlab.api import apply, load_adapter
from peftlab.methods import (
    AdapterError,
    FullFinetuneConfig,
    LoRAConfig,
    PeftLabModel,
    PrefixTuningConfig,
    PromptTuningConfig,
)

__all__ = [
    "AdapterError",
    "FullFinetuneConfig",
    "LoRAConfig",
    "PeftLabModel",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "apply",
    "load_adapter",
]
__version__ = "0.1.0"
