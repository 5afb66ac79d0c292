"""Checks for adapter files from untrusted sources, made before anything is allocated, read or run.

An adapter folder downloaded from somewhere is data, and data must not be able to exhaust memory, reach
outside its folder, hang the loader or run code. ``peftlab.adapters`` and the methods call these checks:

- ``parse_config_text``: ``adapter_config.json`` is at most ``MAX_CONFIG_BYTES`` and a JSON object;
  nesting too deep to parse is an error, not a crash;
- ``check_adapter_fields``: size fields (``r``, ``num_virtual_tokens``, ``encoder_hidden_size``, ...)
  are positive integers under ``MAX_SIZE`` (a LoRA rank of 10**9 would otherwise be allocated at attach
  time, before any tensor is compared); module names (``target_modules``, ``modules_to_save``) are
  dotted names, not paths; a ``target_modules`` regex is short and has no nested quantifiers (which can
  take exponential time to match);
- ``check_sizes_match_tensors``: the config declares no larger a rank or prompt than the tensors in the
  file have, so what loading allocates is bounded by what is on disk;
- ``member_file``: a file a config names (the shards of a full checkpoint) is a plain name inside the folder.

Tensors are read with safetensors only; peftlab never unpickles an adapter (``adapter_model.bin``) and
reads checkpoint state with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from peftlab.errors import AdapterError

MAX_CONFIG_BYTES = 1 << 20  # real adapter_config.json files are a few KB
MAX_SIZE = 1 << 16  # above any real rank, prompt length or encoder width
MAX_REGEX_CHARS = 1000
SHOWN_CHARS = 80  # how much of a bad value an error message quotes
SIZE_FIELDS = ("r", "num_virtual_tokens", "encoder_hidden_size", "token_dim", "num_layers", "num_attention_heads")
NAME_LIST_FIELDS = ("target_modules", "modules_to_save")
PICKLE_WEIGHTS_NAMES = ("adapter_model.bin", "pytorch_model.bin")
QUANTIFIERS = "*+{"
LORA_A_SUFFIX = "lora_A.weight"
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"
PROMPT_LAYOUTS = {
    "PROMPT_TUNING": "[num_virtual_tokens, hidden_size]",
    "PREFIX_TUNING": "[num_virtual_tokens, num_layers * 2 * num_key_value_heads * head_dim]",
}


def parse_config_text(path: Path) -> dict[str, Any]:
    """Read and parse ``adapter_config.json`` at ``path``: size-capped, a JSON object, errors naming the file."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterError(
            f"{path}: {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit for an adapter config; "
            "this is not an adapter_config.json"
        )
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise AdapterError(f"{path}: not valid JSON (nested too deeply to parse)") from None
    except ValueError as error:  # e.g. an integer literal too long to convert
        raise AdapterError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(fields, dict):
        raise AdapterError(f"{path}: expected a JSON object, got {type(fields).__name__}")
    return fields


def check_adapter_fields(fields: dict[str, Any], source: str) -> None:
    """Refuse absurd sizes, path-like module names and dangerous regexes in a parsed adapter config."""
    for name in SIZE_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise AdapterError(f"{source}: field '{name}' must be int, got {_shown(value)}")
        if value < 1:
            raise AdapterError(f"{source}: field '{name}' is {value}; it must be a positive integer")
        if value > MAX_SIZE:
            raise AdapterError(
                f"{source}: field '{name}' is {value}; it must be a positive integer no larger than {MAX_SIZE:,} "
                "(refusing to allocate an adapter of that size)"
            )
    for name in NAME_LIST_FIELDS:
        value = fields.get(name)
        if isinstance(value, list):
            for entry in value:
                check_module_name(entry, name, source)
    target = fields.get("target_modules")
    if isinstance(target, str):
        check_module_regex(target, source)


def check_module_name(entry: Any, field_name: str, source: str) -> None:
    """A module name is dot-separated non-empty parts without slashes or NUL (``q_proj``, ``model.layers.0``)."""
    if not isinstance(entry, str):
        raise AdapterError(f"{source}: field '{field_name}' holds {_shown(entry)}; every entry must be a module name")
    if any(part == "" for part in entry.split(".")) or any(char in entry for char in "/\\\0"):
        raise AdapterError(
            f"{source}: field '{field_name}' holds {_shown(entry)}, which is not a module name "
            "(names are dot-separated, like 'q_proj' or 'model.layers.0.mlp'; paths are not allowed)"
        )


def check_module_regex(pattern: str, source: str) -> None:
    """A ``target_modules`` regex must be short and free of nested quantifiers (no exponential matching)."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise AdapterError(
            f"{source}: field 'target_modules' is a {len(pattern):,}-character regex; the limit is {MAX_REGEX_CHARS}"
        )
    if has_nested_quantifier(pattern):
        raise AdapterError(
            f"{source}: field 'target_modules' regex {_shown(pattern)} repeats a group that itself repeats, "
            "which can take exponential time to match; list the module names instead"
        )


def has_nested_quantifier(pattern: str) -> bool:
    """True when a group that contains a quantifier is itself quantified, e.g. ``(a+)+`` or ``((\\w*)x)*``.

    Such patterns can backtrack exponentially on a name that almost matches.
    """
    groups: list[bool] = []  # per open group: does it contain a quantifier so far?
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":  # a character class: quantifier characters inside it are literals
            index = _class_end(pattern, index)
        elif char == "(":
            groups.append(False)
        elif char == ")" and groups:
            quantified_inside = groups.pop()
            following = pattern[index + 1 : index + 2]
            if quantified_inside and following and following in QUANTIFIERS:
                return True
            if groups:
                groups[-1] = groups[-1] or quantified_inside
        elif char in QUANTIFIERS and groups:
            groups[-1] = True
        index += 1
    return False


def _class_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the character class opened at ``start`` (or the last index)."""
    index = start + 1
    if pattern[index : index + 1] == "^":
        index += 1
    if pattern[index : index + 1] == "]":
        index += 1
    while index < len(pattern) and pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return min(index, len(pattern) - 1)


def check_sizes_match_tensors(fields: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a config that declares a larger rank / prompt than the saved tensors have.

    Attaching allocates what the config declares, before the tensors are compared with the model; with
    this check that is bounded by what is on disk. (A smaller declared size allocates less and is then
    reported by the method's own shape check, naming both shapes.)
    """
    rank = fields.get("r")
    if fields.get("peft_type") == "LORA" and isinstance(rank, int):
        for key, tensor in tensors.items():
            if key.endswith(LORA_A_SUFFIX) and tensor.dim() == 2 and rank > tensor.shape[0]:
                raise AdapterError(
                    f"{source}: field 'r' is {rank} but tensor {key!r} has rank {tensor.shape[0]}; "
                    "the config does not belong to these weights"
                )
    tokens = fields.get("num_virtual_tokens")
    prompt = tensors.get(PROMPT_EMBEDDINGS_KEY)
    if isinstance(tokens, int) and prompt is not None and prompt.dim() >= 1 and tokens > prompt.shape[0]:
        layout = PROMPT_LAYOUTS.get(str(fields.get("peft_type")), "[num_virtual_tokens, ...]")
        raise AdapterError(
            f"{source}: field 'num_virtual_tokens' is {tokens} but tensor {PROMPT_EMBEDDINGS_KEY!r} has shape "
            f"{tuple(prompt.shape)} (it holds {layout}); the config does not belong to these weights"
        )


def member_file(directory: Path, name: Any, source: str, field_name: str) -> Path:
    """``directory / name`` for a file name read from a config; refuses anything that is not a plain name in it."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(char in name for char in "/\\\0"):
        raise AdapterError(
            f"{source}: field '{field_name}' names {_shown(name)}; it must be a plain file name inside {directory}"
        )
    return directory / name


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a hostile file must not blow up the error message."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def pickle_weights_message(directory: Path, weights_name: str) -> str | None:
    """Why a folder that holds only pickled weights is refused (None when it holds none)."""
    found = [name for name in PICKLE_WEIGHTS_NAMES if (directory / name).is_file()]
    if not found:
        return None
    return (
        f"{directory / weights_name}: missing; {found[0]} is a pickle file, which peftlab does not load because "
        "unpickling can run arbitrary code. Convert it where you trust it: "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')"
    )


__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_SIZE",
    "check_adapter_fields",
    "check_module_name",
    "check_module_regex",
    "check_sizes_match_tensors",
    "has_nested_quantifier",
    "member_file",
    "parse_config_text",
    "pickle_weights_message",
]
