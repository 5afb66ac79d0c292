"""The schema of one run: model, data, method, training and logging settings.

These dataclasses are both what ``peftlab.train.train`` takes and what the Hydra ConfigStore
registers, so a typo or a wrong type in a YAML file or an override fails before any model loads.
Field types stay within what OmegaConf structured configs support (no unions besides Optional).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

# The embedded example data. Paths starting with ``peftlab/`` that do not exist relative to the working
# directory resolve inside the installed package (see ``resolve_path``), so the defaults work from anywhere.
EMBEDDED_TRAIN_FILE = "peftlab/data/examples/style_train.jsonl"
EMBEDDED_VALID_FILE = "peftlab/data/examples/style_valid.jsonl"
DEMO_PRESET_OVERRIDES: dict[str, Any] = {"initializer_range": 0.1}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
RESOLVED_CONFIG_NAME = "run_config.json"


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
    pooling: str = "cls"  # cls (the model's own head) | mean: a BERT-style classifier reads the masked mean of its tokens
    # preset config fields to change. The default widens the random init (transformers uses 0.02) so that a
    # frozen random base can express confident predictions and the embedded demo's loss visibly falls.
    config_overrides: dict[str, Any] = field(default_factory=lambda: dict(DEMO_PRESET_OVERRIDES))


# LoRA built by Hugging Face peft: the benchmark's reference, not trainable with peftlab
PEFT_LORA = "peft_lora"


@dataclass
class MethodSettings:
    """The method and its hyperparameters; ``name`` picks the method, unused fields are ignored."""

    name: str = "lora"  # lora | prompt_tuning | prefix_tuning | full (| peft_lora with `peftlab bench`)
    # LoRA
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = None  # list of names/suffixes, a regex string, "all-linear", or None (architecture default)
    use_rslora: bool = False
    bias: str = "none"
    modules_to_save: Any = None
    kernel: str = "auto"  # auto | triton | torch
    fuse_shared_input: str = "auto"  # auto (with the Triton kernels) | on | off: q/k/v and gate/up read X once
    # prompt / prefix tuning
    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "random"  # random | sample_vocab | text
    prompt_tuning_init_text: str | None = None
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    prefix_init: str = "random"  # random (N(0, 1), as peft) | real_tokens | text: the model's own keys/values of tokens
    prefix_init_text: str | None = None


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
    text_pair_field: str | None = None  # sentence-pair classification (MNLI, RTE, ...): the second text's field
    label_field: str = "label"
    max_length: int = 256
    packing: bool = False
    truncation: bool = False  # True: cut examples longer than max_length (a warning); False: they are errors
    truncation_side: str = "right"  # right: keep the start | left: keep the end (the completion), cut the prompt's start


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 30  # the embedded demo: 30 passes over 40 conversations (150 steps, < 1 min on a CPU)
    max_steps: int = -1  # > 0 stops after this many optimiser steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-2  # suits the tiny random presets; pretrained models want ~1e-4 (LoRA) to ~2e-5 (full)
    weight_decay: float = 0.0
    loraplus_lr_ratio: float = 1.0  # LoRA+: LoRA's B matrices train at lr × this (the paper: ~16); 1: plain
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
    init_head: str = "keep"  # keep | new: with init_from, a new classification head (e.g. MNLI -> RTE)
    skip_nonfinite: bool = False
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "none"  # none | ddp | fsdp: how the processes of a torchrun / SLURM launch share the model


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


def resolve_path(path: str | Path) -> Path:
    """An absolute path for ``path``: as given if it exists (or is absolute), else inside the package.

    ``peftlab/data/examples/style_train.jsonl`` thus names the shipped file from any working directory.
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    packaged = PACKAGE_ROOT / candidate
    return packaged if packaged.exists() else candidate.resolve()


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The run config as plain JSON-able data."""
    return asdict(cfg)


def config_from_dict(data: dict[str, Any], source: str = "run config") -> RunConfig:
    """Rebuild a ``RunConfig`` from ``config_to_dict`` output, checking every field's type.

    Keys outside the ``RunConfig`` schema (settings a subclass such as the Hydra app's adds) are dropped.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        known = _known_fields(data, RunConfig)
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(known))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise ValueError(f"{source}: {error}") from None


def _known_fields(data: dict[str, Any], schema: type) -> dict[str, Any]:
    """``data`` restricted to the fields of dataclass ``schema`` (recursively for nested dataclasses)."""
    hints = get_type_hints(schema)
    known: dict[str, Any] = {}
    for item in fields(schema):
        if item.name not in data:
            continue
        value = data[item.name]
        kind = hints[item.name]
        nested = is_dataclass(kind) and isinstance(value, dict)
        known[item.name] = _known_fields(value, kind) if nested else value
    return known


def save_resolved_config(cfg: RunConfig, directory: str | Path) -> Path:
    """Write ``run_config.json`` (the config a run actually used) into ``directory``."""
    path = Path(directory) / RESOLVED_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never a torn file
    temp.write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temp.replace(path)
    return path


def load_resolved_config(directory: str | Path) -> RunConfig:
    """Read a run folder's ``run_config.json``; errors name the file."""
    path = Path(directory) / RESOLVED_CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{path}: missing; {directory} is not a finished or running peftlab run folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config_from_dict(data, str(path))
