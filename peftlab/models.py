"""Load models by Hugging Face id or local path, or build small ones from a config (tests, CPU demos).

The presets are tiny, randomly initialised versions of the architectures the methods must cover:
a GQA decoder (Llama), GPT-2 (``Conv1D`` projections, learned positions) and a BERT encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
)

TASKS = ("causal_lm", "sequence_classification")

# Small enough to train in seconds on a CPU, big enough to exercise every code path (GQA, several layers).
PRESETS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "tiny-llama": (
        LlamaConfig,
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        ),
    ),
    "tiny-gpt2": (
        GPT2Config,
        dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, eos_token_id=0),
    ),
    "tiny-bert": (
        BertConfig,
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
        ),
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def preset_config(name: str, **overrides: Any) -> PretrainedConfig:
    """The ``transformers`` config of a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    config_class, fields = PRESETS[name]
    return config_class(**{**fields, **overrides})


def build_model(
    config: PretrainedConfig | str,
    task: str = "causal_lm",
    num_labels: int = 2,
    seed: int | None = 0,
    dtype: str | torch.dtype = "float32",
) -> nn.Module:
    """Build a randomly initialised model from a config (or preset name), seeded for reproducibility."""
    if isinstance(config, str):
        config = preset_config(config)
    if task == "sequence_classification":
        config.num_labels = num_labels
    if seed is not None:
        torch.manual_seed(seed)
    auto = _auto_class(task)
    model = auto.from_config(config)
    return model.to(resolve_dtype(dtype))


def load_pretrained(
    name_or_path: str,
    task: str = "causal_lm",
    num_labels: int = 2,
    dtype: str | torch.dtype = "float32",
    **kwargs: Any,
) -> nn.Module:
    """Load a pretrained model by Hugging Face id or local path (``from_pretrained``)."""
    auto = _auto_class(task)
    if task == "sequence_classification":
        kwargs.setdefault("num_labels", num_labels)
    return auto.from_pretrained(name_or_path, dtype=resolve_dtype(dtype), **kwargs)


def load_config(name_or_path: str) -> PretrainedConfig:
    """The config of a Hugging Face id, a local path, or a preset name."""
    if name_or_path in PRESETS:
        return preset_config(name_or_path)
    return AutoConfig.from_pretrained(name_or_path)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (and pass ``torch.dtype`` through)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _auto_class(task: str) -> Any:
    if task == "causal_lm":
        return AutoModelForCausalLM
    if task == "sequence_classification":
        return AutoModelForSequenceClassification
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
