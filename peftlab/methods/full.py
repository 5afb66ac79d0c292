"""Full fine-tuning: every parameter trains. The baseline each parameter-efficient method is measured against.

Saving writes a standard ``transformers`` checkpoint (``config.json`` + ``model.safetensors``) that
``AutoModel*.from_pretrained`` loads, plus an ``adapter_config.json`` with ``peft_type: "FULL"`` so
``peftlab.load_adapter`` knows what the folder holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from peftlab.adapters import CONFIG_NAME
from peftlab.errors import AdapterError
from peftlab.methods.base import Method
from peftlab.safety import member_file

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


@dataclass
class FullFinetuneConfig:
    """Train all parameters of the model."""

    task_type: str = "CAUSAL_LM"


class FullFinetune(Method):
    """All base parameters trainable; nothing added."""

    peft_type: ClassVar[str] = "FULL"
    config_class: ClassVar[type] = FullFinetuneConfig

    def attach(self, model: nn.Module) -> None:
        """Make every parameter of ``model`` trainable."""
        for parameter in model.parameters():
            parameter.requires_grad_(True)

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """Marker config: the folder is a full ``transformers`` checkpoint."""
        return {
            "peft_type": self.peft_type,
            "task_type": self.config.task_type,
            "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every weight of the model, keyed as ``transformers`` keys its checkpoints."""
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write a ``transformers`` checkpoint plus the marker ``adapter_config.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        text = json.dumps(self.adapter_config(model), indent=2, sort_keys=True) + "\n"
        (directory / CONFIG_NAME).write_text(text, encoding="utf-8")

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy a full checkpoint in after checking every key and shape."""
        own = model.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise AdapterError(f"{source}: tensor {unknown[0]!r} does not exist in this model ({len(unknown)} unknown)")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise AdapterError(
                    f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
                )
        tied = _tied_parameter_names(model)
        missing = sorted(set(own) - set(state) - tied)
        if missing:
            raise AdapterError(f"{source}: tensor {missing[0]!r} is missing ({len(missing)} missing)")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    @classmethod
    def config_from_adapter_config(cls, fields: dict[str, Any], source: str) -> FullFinetuneConfig:
        """Rebuild the config from the marker file."""
        return FullFinetuneConfig(task_type=str(fields.get("task_type") or "CAUSAL_LM"))

    def read_weights(self, directory: Path) -> dict[str, torch.Tensor]:
        """Read ``model.safetensors`` (or its shards) from ``directory``."""
        index = directory / WEIGHTS_INDEX_FILE
        files = [directory / WEIGHTS_FILE]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as error:
                raise AdapterError(f"{index}: field 'weight_map' unreadable ({type(error).__name__}: {error})") from None
            if not isinstance(weight_map, dict):
                raise AdapterError(f"{index}: field 'weight_map' must map tensor names to file names")
            # shard names come from the file: each must be a plain name inside this folder
            files = sorted({member_file(directory, name, str(index), "weight_map") for name in weight_map.values()})
        state: dict[str, torch.Tensor] = {}
        for path in files:
            if not path.is_file():
                raise AdapterError(f"{path}: missing (a full fine-tuning checkpoint holds {WEIGHTS_FILE})")
            try:
                state.update(load_file(str(path)))
            except (SafetensorError, OSError, ValueError, RuntimeError) as error:
                raise AdapterError(f"{path}: cannot read tensors, the file is truncated or not safetensors ({error})") from None
        return state


def _tied_parameter_names(model: nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (e.g. a tied ``lm_head``)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied
