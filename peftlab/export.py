"""Export a run as a standard ``transformers`` checkpoint: LoRA merged into the base weights.

The result is a plain folder (``config.json``, ``model.safetensors``, generation config, tokenizer)
that ``AutoModelForCausalLM.from_pretrained`` (or ``AutoModelForSequenceClassification``) loads with
no peftlab installed. Full fine-tuning runs export their weights as they are. Prompt and prefix tuning
add inputs rather than a weight update, so they cannot be merged; use the run folder with
``peftlab generate`` instead. A classifier with ``model.pooling=mean`` has no plain ``transformers``
form, so it is refused too.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from peftlab.builder import load_run, quiet_progress_bars
from peftlab.run_config import load_resolved_config

MERGEABLE_METHODS = ("lora", "full")


def export_merged(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Merge the run's adapter into its base model and save model + tokenizer to ``out_dir``.

    Refuses a non-empty ``out_dir`` unless ``overwrite`` is set.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; choose another folder or pass --overwrite"
        )
    pooling = load_resolved_config(Path(run_dir)).model.pooling
    if pooling != "cls":
        raise ValueError(
            f"{run_dir}: the run's classifier reads model.pooling={pooling}, which a plain "
            "AutoModelForSequenceClassification checkpoint cannot express (it would load BERT's own pooler); "
            "use the run folder with peftlab instead"
        )
    loaded = load_run(run_dir, with_adapter=True)
    method = loaded.cfg.method.name
    if method not in MERGEABLE_METHODS:
        raise ValueError(
            f"{run_dir}: a {method} run adds virtual tokens, not a weight update, so it cannot be merged "
            f"into a plain checkpoint (export supports {', '.join(MERGEABLE_METHODS)}); "
            f"use `peftlab generate {run_dir}`"
        )
    wrapped = loaded.model
    if method == "lora":
        wrapped.merge()
    plain = unload(wrapped.base_model)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress_bars():
        plain.save_pretrained(str(out), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(out))
    return out


def unload(model: nn.Module) -> nn.Module:
    """Replace each merged adapter layer (a module with ``base_layer`` and ``merged=True``) by its base layer.

    Raises ``ValueError`` if an adapter layer is not merged, since dropping it would lose its update.
    """
    replacements = [
        (name, module) for name, module in model.named_modules() if hasattr(module, "base_layer") and name
    ]
    for name, module in replacements:
        if not getattr(module, "merged", False):
            raise ValueError(f"adapter layer {name!r} is not merged; call merge() before unload()")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base_layer)
    return model
