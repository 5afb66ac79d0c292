"""The schema of one run: model, data, method, training and logging settings.

These dataclasses are both what ``peftlab.train.train`` takes and what the Hydra ConfigStore
registers, so a typo or a wrong type in a YAML file or an override fails before any model loads.
Field types stay within what OmegaConf structured configs support (no unions besides Optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EMBEDDED_TRAIN_FILE = "peftlab/data/examples/style_train.jsonl"
EMBEDDED_VALID_FILE = "peftlab/data/examples/style_valid.jsonl"


@dataclass
class ModelConfig:
    """Which model: a preset built from a config, a Hugging Face id / local path, or a GGUF file."""

    preset: str | None = "tiny-llama"  # tiny-llama | tiny-gpt2 | tiny-bert | None to load `name_or_path`
    name_or_path: str | None = None  # HF id or local directory, used when preset is None
    gguf_file: str | None = None  # a GGUF file name inside name_or_path
    tokenizer: str | None = None  # HF id / path of the tokenizer; None: same as the model, or the byte tokenizer for presets
    task: str = "causal_lm"  # causal_lm | sequence_classification
    num_labels: int = 2
    dtype: str = "float32"  # float32 | bfloat16 | float16 (weights of the frozen base)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # preset config fields to change


@dataclass
class MethodSettings:
    """The method and its hyperparameters; ``name`` picks the method, unused fields are ignored."""

    name: str = "lora"  # lora | prompt_tuning | prefix_tuning | full
    # LoRA
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = None  # list of names/suffixes, a regex string, "all-linear", or None (architecture default)
    use_rslora: bool = False
    bias: str = "none"
    modules_to_save: Any = None
    kernel: str = "auto"  # auto | triton | torch
    # prompt / prefix tuning
    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "random"  # random | sample_vocab | text
    prompt_tuning_init_text: str | None = None
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None


@dataclass
class DataConfig:
    """Training and validation data: JSONL files or a Hugging Face ``datasets`` source."""

    train_file: str | None = EMBEDDED_TRAIN_FILE
    valid_file: str | None = EMBEDDED_VALID_FILE
    format: str = "auto"  # auto | chat | completion | classification
    hf_dataset: str | None = None  # `datasets` name, used when train_file is None
    hf_config: str | None = None
    hf_train_split: str = "train"
    hf_valid_split: str | None = "validation"
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = 256
    packing: bool = False


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 3
    max_steps: int = -1  # > 0 stops after this many optimiser steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    init_from: str | None = None  # a saved adapter / full checkpoint to continue from
    skip_nonfinite: bool = False
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class LoggerConfig:
    """Where events go: always ``events.jsonl``; optionally the console and W&B."""

    console: bool = True
    wandb: bool = False
    wandb_mode: str = "offline"  # online | offline | disabled
    wandb_project: str = "peftlab"
    wandb_entity: str | None = None
    wandb_group: str | None = None


@dataclass
class BenchConfig:
    """Benchmark mode: timed steps after warm-up steps that are not counted."""

    warmup_steps: int = 2
    steps: int = 10
    seq_len: int = 128
    batch_size: int = 4


@dataclass
class RunConfig:
    """Everything one run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodSettings = field(default_factory=MethodSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    seed: int = 0
    output_dir: str = "runs/default"
