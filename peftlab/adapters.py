"""Adapter files in the Hugging Face PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

Reading never unpickles: tensors come from safetensors only. Every problem is reported as an
``AdapterError`` that names the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftlab.atomic import write_atomic, write_text_atomic
from peftlab.errors import AdapterError
from peftlab.safety import check_adapter_fields, parse_config_text, pickle_weights_message

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def write_adapter(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``.

    Each file is written to a temporary name first and renamed into place, so a crash never leaves
    a half-written adapter behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_atomic(directory / WEIGHTS_NAME, lambda path: save_file(contiguous, path, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_text_atomic(directory / CONFIG_NAME, text)


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Parse ``adapter_config.json`` in ``directory``; errors name the file and the problem."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise AdapterError(f"{directory}: adapter directory does not exist")
    if not path.is_file():
        raise AdapterError(f"{path}: missing (an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    fields = parse_config_text(path)  # size-capped; deep nesting is an error, not a crash
    if "peft_type" not in fields:
        raise AdapterError(f"{path}: field 'peft_type' is missing")
    check_adapter_fields(fields, str(path))  # absurd sizes, path-like names: refused before anything is built
    return fields


def read_adapter_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Load ``adapter_model.safetensors`` in ``directory`` (never pickle)."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        refusal = pickle_weights_message(Path(directory), WEIGHTS_NAME)
        raise AdapterError(refusal or f"{path}: missing (an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())
        raise AdapterError(f"{path}: cannot read tensors, the file is truncated or not safetensors ({reason})") from None


def field(fields: dict[str, Any], name: str, kind: type | tuple[type, ...], source: str, default: Any = ...) -> Any:
    """Read one config field with a type check; a bad or missing value raises ``AdapterError``."""
    if name not in fields or fields[name] is None:
        if default is ...:
            raise AdapterError(f"{source}: field '{name}' is missing")
        return default
    value = fields[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise AdapterError(f"{source}: field '{name}' must be a number, got {value!r}")
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AdapterError(f"{source}: field '{name}' must be {expected}, got {value!r}")
    return value

