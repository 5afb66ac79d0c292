"""The one small interface every fine-tuning method implements, and the model wrapper users hold.

A method is an ``nn.Module`` that owns its own trainable state (soft prompts, prefix encoders) or
injects it into the base model's modules (LoRA layers). ``PeftLabModel`` pairs a base model with one
method and forwards like the base model does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.errors import AdapterError

# The output heads of ``AutoModelForSequenceClassification`` models (``classifier``: BERT, RoBERTa, ...;
# ``score``: decoder-based classifiers). PEFT trains them in full for every SEQ_CLS adapter
# (``modules_to_save``), whether the model has them or not.
CLASSIFICATION_HEAD_NAMES = ("classifier", "score")

__all__ = ["AdapterError", "Method", "PeftLabModel"]


class Method(nn.Module, ABC):
    """Base class of the fine-tuning methods (LoRA, prompt tuning, prefix tuning, full).

    Subclasses set ``peft_type`` (the upper-case name Hugging Face PEFT writes in
    ``adapter_config.json``) and ``config_class``, and implement ``attach``.
    """

    peft_type: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @abstractmethod
    def attach(self, model: nn.Module) -> None:
        """Validate the config against ``model``, then add this method's parameters to it.

        Must check everything before changing anything, so that a failure leaves ``model`` as it was.
        """

    def detach_from(self, model: nn.Module) -> None:
        """Undo ``attach`` (used when a later step fails, so nothing stays half-applied)."""

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Run ``model`` with this method active; the default is the model's own forward."""
        return model(*args, **kwargs)

    def generate(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Generate with this method active; the default is the model's own ``generate``."""
        return model.generate(*args, **kwargs)

    def freeze_base(self, model: nn.Module) -> None:
        """Freeze every base-model parameter; methods re-enable what they train."""
        for parameter in model.parameters():
            parameter.requires_grad_(False)

    # --- adapter files -----------------------------------------------------------------------------

    @abstractmethod
    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """The ``adapter_config.json`` contents, in the Hugging Face PEFT layout."""

    @abstractmethod
    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors to save, keyed as Hugging Face PEFT keys them in ``adapter_model.safetensors``."""

    @abstractmethod
    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy saved tensors in; raise ``AdapterError`` naming ``source`` and the key on any mismatch.

        Must validate every key and shape before copying any, so nothing is half-loaded.
        """

    @classmethod
    @abstractmethod
    def config_from_adapter_config(cls, fields: dict[str, Any], source: str) -> Any:
        """Build this method's config from a parsed ``adapter_config.json`` (``source`` names the file)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write this method's files into ``directory`` (PEFT layout by default)."""
        from peftlab.adapters import write_adapter

        write_adapter(directory, self.adapter_config(model), self.adapter_state_dict(model))

    # --- merging (LoRA only) -----------------------------------------------------------------------

    def merge(self, model: nn.Module) -> None:
        """Fold the method's update into the base weights (only methods with a weight delta)."""
        raise TypeError(f"{type(self).__name__} has no weight update to merge; merge() applies to LoRA.")

    def unmerge(self, model: nn.Module) -> None:
        """Undo ``merge``."""
        raise TypeError(f"{type(self).__name__} has no weight update to unmerge; unmerge() applies to LoRA.")


class PeftLabModel(nn.Module):
    """A base ``transformers`` model with one fine-tuning method applied; forwards like the base model."""

    def __init__(self, base_model: nn.Module, method: Method) -> None:
        super().__init__()
        self.base_model = base_model
        self.method = method

    @property
    def config(self) -> Any:
        """The base model's ``transformers`` config."""
        return self.base_model.config

    @property
    def peft_config(self) -> Any:
        """The method's config dataclass."""
        return self.method.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through the base model with the method active."""
        return self.method(self.base_model, *args, **kwargs)

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` on the base model with the method active."""
        return self.method.generate(self.base_model, *args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that receive gradients."""
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` for the parameters that receive gradients."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        """How many scalars are trained."""
        return sum(p.numel() for p in self.trainable_parameters())

    def num_parameters(self) -> int:
        """How many scalars the model has in all (base plus method)."""
        return sum(p.numel() for p in self.parameters())

    def save_adapter(self, directory: str | Path) -> Path:
        """Save the method's files into ``directory`` (created if missing) and return its path."""
        path = Path(directory)
        self.method.save(self.base_model, path)
        return path

    def merge(self) -> None:
        """Fold LoRA updates into the base weights (exact to rounding)."""
        self.method.merge(self.base_model)

    def unmerge(self) -> None:
        """Remove previously merged LoRA updates from the base weights."""
        self.method.unmerge(self.base_model)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        """Delegate to the base model (some ``transformers`` utilities look for it on the wrapper)."""
        return self.base_model.prepare_inputs_for_generation(*args, **kwargs)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Turn on the base model's activation (gradient) checkpointing."""
        self.base_model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Alias of ``activation_checkpointing_enable`` under the older ``transformers`` name."""
        self.activation_checkpointing_enable(**kwargs)
