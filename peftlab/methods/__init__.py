"""The fine-tuning methods and the registry that maps configs and PEFT type names to them."""

from __future__ import annotations

from peftlab.errors import AdapterError
from peftlab.methods.base import Method, PeftLabModel
from peftlab.methods.full import FullFinetune, FullFinetuneConfig
from peftlab.methods.lora import LoRA, LoRAConfig
from peftlab.methods.prefix_tuning import PrefixTuning, PrefixTuningConfig
from peftlab.methods.prompt_tuning import PromptTuning, PromptTuningConfig

# `peftlab.apply` and `peftlab.load_adapter` dispatch through this list.
METHODS: list[type[Method]] = [LoRA, PromptTuning, PrefixTuning, FullFinetune]


def method_for_config(config: object) -> type[Method]:
    """The method class whose config dataclass ``config`` is."""
    for method in METHODS:
        if isinstance(config, method.config_class):
            return method
    known = ", ".join(m.config_class.__name__ for m in METHODS)
    raise TypeError(f"unknown method config {type(config).__name__}; expected one of: {known}")


def method_for_peft_type(peft_type: str, source: str) -> type[Method]:
    """The method class for an ``adapter_config.json`` ``peft_type`` value."""
    for method in METHODS:
        if method.peft_type == peft_type:
            return method
    known = ", ".join(m.peft_type for m in METHODS)
    raise AdapterError(f"{source}: field 'peft_type' is {peft_type!r}; supported: {known}")


__all__ = [
    "METHODS",
    "AdapterError",
    "FullFinetune",
    "FullFinetuneConfig",
    "LoRA",
    "LoRAConfig",
    "Method",
    "PeftLabModel",
    "PrefixTuning",
    "PrefixTuningConfig",
    "PromptTuning",
    "PromptTuningConfig",
    "method_for_config",
    "method_for_peft_type",
]
