"""What prompt tuning and prefix tuning share: config checks, model sizes, and ``modules_to_save``.

Both methods keep their learned vectors outside the base model and may also train whole base modules
(a classification head): ``modules_to_save``. Hugging Face PEFT saves those modules' tensors next to
``prompt_embeddings`` as ``base_model.<module path>.<tensor name>``; the helpers here read and write them
in that layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.adapters import field
from peftlab.errors import AdapterError
from peftlab.methods.base import CLASSIFICATION_HEAD_NAMES

# Task types the prompt-learning methods run (PEFT's ``task_type`` strings).
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")
# The key PEFT stores the learned vectors under.
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"
# PEFT's key prefix for base-model tensors of a prompt-learning adapter (``PeftModel.base_model`` is the model).
BASE_MODEL_PREFIX = "base_model."
# Adapter-config fields every prompt-learning adapter file carries, with the values peftlab writes.
LAYOUT_FIELDS: dict[str, Any] = {"num_transformer_submodules": 1, "inference_mode": True, "revision": None, "auto_mapping": None}


def check_num_virtual_tokens(value: Any, owner: str) -> int:
    """``num_virtual_tokens`` must be a positive integer; raise ``ValueError`` naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.num_virtual_tokens must be a positive integer, got {value!r}")
    return value


def normalize_task_type(value: Any, owner: str) -> str:
    """The upper-case PEFT task type; raise ``ValueError`` for one these methods do not run."""
    task = str(value).upper() if value is not None else ""
    if task not in TASK_TYPES:
        raise ValueError(f"{owner}.task_type is {value!r}; supported: {', '.join(TASK_TYPES)}")
    return task


@dataclass(frozen=True)
class ConfigDims:
    """Sizes PEFT reads from a ``transformers`` config for its prompt-learning adapter files."""

    num_layers: int | None
    hidden_size: int | None
    num_attention_heads: int | None


def config_dims(model: nn.Module) -> ConfigDims:
    """Layers, hidden size and attention heads as PEFT's ``_prepare_prompt_learning_config`` reads them."""
    config = getattr(model, "config", None)

    def first(*names: str) -> int | None:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return ConfigDims(
        num_layers=first("num_hidden_layers", "num_layers", "n_layer"),
        hidden_size=first("hidden_size", "n_embd", "d_model"),
        num_attention_heads=first("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
    )


def check_single_stack(model: nn.Module, owner: str) -> None:
    """Reject encoder-decoder models: their adapters need two transformer stacks (``num_transformer_submodules=2``)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise AdapterError(
            f"{owner}: {type(model).__name__} is an encoder-decoder model; prompt and prefix tuning here support "
            "decoder-only and encoder-only models (one transformer stack, num_transformer_submodules=1)"
        )


def read_common_fields(fields: dict[str, Any], source: str, owner: str) -> tuple[int, str]:
    """``(num_virtual_tokens, task_type)`` of a prompt-learning adapter file, checked field by field.

    The file must also describe one transformer stack; every problem raises ``AdapterError`` naming the field.
    """
    stacks = field(fields, "num_transformer_submodules", int, source, default=1)
    if stacks != 1:
        raise AdapterError(
            f"{source}: field 'num_transformer_submodules' is {stacks}; only 1 (decoder-only or encoder-only models) "
            "is supported"
        )
    num_virtual_tokens = field(fields, "num_virtual_tokens", int, source)
    if num_virtual_tokens <= 0:
        raise AdapterError(f"{source}: field 'num_virtual_tokens' must be positive, got {num_virtual_tokens}")
    task_type = field(fields, "task_type", str, source, default="CAUSAL_LM")
    try:
        task_type = normalize_task_type(task_type, owner)
    except ValueError:
        raise AdapterError(f"{source}: field 'task_type' is {task_type!r}; supported: CAUSAL_LM, SEQ_CLS") from None
    return num_virtual_tokens, task_type


def modules_to_save_from_fields(fields: dict[str, Any], source: str) -> list[str] | None:
    """The ``modules_to_save`` list of an adapter file (``None`` when absent); entries must be strings."""
    names = field(fields, "modules_to_save", list, source, default=None)
    if names is not None and not all(isinstance(name, str) for name in names):
        raise AdapterError(f"{source}: field 'modules_to_save' must be a list of module names, got {names!r}")
    return names


class SavedModules:
    """Whole base-model modules trained next to the prompt (``modules_to_save``), trained in place.

    ``attach`` makes them trainable after remembering their values and every parameter's
    ``requires_grad`` flag, so ``restore`` can put the model back exactly as it was.
    """

    def __init__(self, model: nn.Module, names: list[str] | None, task_type: str, owner: str) -> None:
        requested = list(dict.fromkeys(names if names is not None else []))
        if names is None and task_type == "SEQ_CLS":
            requested = list(CLASSIFICATION_HEAD_NAMES)
        self.modules, self.names = _match_modules(model, requested, explicit=names is not None, owner=owner)
        self._saved_values: dict[str, torch.Tensor] = {}
        self._saved_flags: list[tuple[nn.Parameter, bool]] = []

    def attach(self, model: nn.Module) -> None:
        """Remember the model's state, freeze every base parameter, then unfreeze the saved modules."""
        self._saved_flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        self._saved_values = {key: tensor.detach().clone() for key, tensor in self._tensors().items()}
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for module in self.modules.values():
            for parameter in module.parameters():
                parameter.requires_grad_(True)

    def restore(self) -> None:
        """Put back the values and ``requires_grad`` flags ``attach`` found."""
        with torch.no_grad():
            for key, tensor in self._tensors().items():
                if key in self._saved_values:
                    tensor.copy_(self._saved_values[key])
        for parameter, flag in self._saved_flags:
            parameter.requires_grad_(flag)
        self._saved_values, self._saved_flags = {}, []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The saved modules' tensors, keyed as PEFT keys them (``base_model.<path>.<name>``)."""
        return {key: tensor.detach() for key, tensor in self._tensors().items()}

    def check_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Check that ``state`` holds every saved-module tensor with the right shape, and nothing unknown."""
        own = self._tensors()
        unknown = sorted(set(state) - set(own) - {PROMPT_EMBEDDINGS_KEY})
        if unknown:
            raise AdapterError(
                f"{source}: tensor {unknown[0]!r} is not part of this adapter (expected {PROMPT_EMBEDDINGS_KEY!r}"
                + (f" and {', '.join(sorted(own))}" if own else "")
                + ")"
            )
        for key, tensor in own.items():
            if key not in state:
                raise AdapterError(f"{source}: tensor {key!r} of modules_to_save is missing")
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise AdapterError(
                    f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
                )

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the saved-module tensors in (call ``check_state`` first)."""
        with torch.no_grad():
            for key, tensor in self._tensors().items():
                tensor.copy_(state[key])

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for path, module in self.modules.items():
            for name, tensor in module.state_dict(keep_vars=True).items():
                tensors[f"{BASE_MODEL_PREFIX}{path}.{name}"] = tensor
        return tensors


def _match_modules(
    model: nn.Module, names: list[str], explicit: bool, owner: str
) -> tuple[dict[str, nn.Module], list[str]]:
    """Modules whose path equals an entry or ends with ``.entry`` (PEFT's rule), and the entries that matched."""
    matched: dict[str, nn.Module] = {}
    found: list[str] = []
    missing: list[str] = []
    for name in names:
        hits = [
            (path, module)
            for path, module in model.named_modules()
            if path and (path == name or path.endswith("." + name))
            and not any(path.startswith(done + ".") for done in matched)
        ]
        if hits:
            found.append(name)
        else:
            missing.append(name)
        matched.update(hits)
    # PEFT lists both head names for every SEQ_CLS adapter; the one a model lacks is not an error.
    tolerated = set(missing) <= set(CLASSIFICATION_HEAD_NAMES) and (matched or not explicit)
    if missing and not tolerated:
        raise AdapterError(
            f"{owner}.modules_to_save: no module of {type(model).__name__} is named {missing[0]!r} "
            "(entries match a module path or its last components, e.g. 'classifier' or 'score')"
        )
    return matched, found


def text_token_ids(text: Any, tokenizer: Any, owner: str, text_field: str, init_field: str) -> list[int]:
    """The flat ``input_ids`` of ``text`` under ``tokenizer`` (an object or a name/path), for a ``text`` init.

    Errors name ``owner.text_field`` / ``owner.tokenizer`` and say what is expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"{owner}.{text_field} must be a string when {init_field}='text', got {text!r}")
    if tokenizer is None:
        raise ValueError(f"{owner}.tokenizer is required when {init_field}='text' (a tokenizer object or its name)")
    tokenizer = load_tokenizer_object(tokenizer, owner)
    try:
        encoded = tokenizer(text)
        token_ids = encoded["input_ids"]
    except (TypeError, KeyError) as error:
        raise ValueError(
            f"{owner}.tokenizer must map a string to a mapping with 'input_ids' ({type(error).__name__}: {error})"
        ) from None
    token_ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    if token_ids and isinstance(token_ids[0], list):
        raise ValueError(f"{owner}.tokenizer returned a batch for one string; expected a flat list of input_ids")
    if not token_ids:
        raise ValueError(f"{owner}.{text_field} {text!r} tokenises to no tokens; give a non-empty text")
    return [int(token) for token in token_ids]


def init_token_ids(text_ids: list[int] | None, count: int, vocabulary: int, owner: str, text_field: str) -> torch.Tensor:
    """``count`` token ids that virtual tokens start from: ``text_ids`` repeated (then cut) to length, as PEFT
    fills a prompt from a short text, or, given None, ids drawn uniformly from the vocabulary (global RNG).

    Raises ``ValueError`` naming ``owner.text_field`` when the text holds an id beyond ``vocabulary``.
    """
    if text_ids is None:
        return torch.randint(0, vocabulary, (count,), dtype=torch.long)
    repeats = math.ceil(count / len(text_ids))
    token_ids = torch.tensor((text_ids * repeats)[:count], dtype=torch.long)
    out_of_range = token_ids[token_ids >= vocabulary]
    if out_of_range.numel():
        raise ValueError(
            f"{owner}.{text_field} tokenises to id {int(out_of_range[0])}, beyond the model's "
            f"{vocabulary} input embeddings; use the model's own tokenizer"
        )
    return token_ids


def load_tokenizer_object(tokenizer: Any, owner: str) -> Any:
    """``tokenizer`` itself when callable, else ``AutoTokenizer.from_pretrained(tokenizer)``, with a clear error."""
    if not isinstance(tokenizer, str):
        if not callable(tokenizer):
            raise ValueError(f"{owner}.tokenizer must be a callable tokenizer or a name/path, got {type(tokenizer).__name__}")
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as error:
        raise ValueError(f"{owner}.tokenizer {tokenizer!r} cannot be loaded by AutoTokenizer ({error})") from None
