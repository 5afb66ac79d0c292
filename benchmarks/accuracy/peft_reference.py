"""Train ``peft``'s implementation of a method with exactly the recipe and batches of a peftlab run.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/peft_reference.py OUT_DIR experiment=accuracy_minilm_pang_lee \\
        method=lora train.lr=1e-3 seed=0

The overrides compose ``configs/`` as ``peftlab train`` does. The same seed, tokenizer, base model and
classification head, the same batches in the same order (``peftlab.train.make_loader``), the same AdamW
settings and learning-rate schedule; only the method comes from ``peft`` (LoRA, prefix tuning, prompt
tuning; ``full`` trains the plain model). With ``--peftlab-draws`` the method's initial values are drawn
after ``torch.manual_seed(seed + METHOD_INIT_SEED_OFFSET)``, as ``peftlab train`` draws its own, so the
run pairs seed for seed with peftlab's (same ``A``, same dropout stream); without it peft draws from the
stream the base model left, as a plain ``peft`` script would. Writes ``OUT_DIR/result.json`` with ``task_accuracy`` (the
accuracy on ``data.valid_file``) and per-step times, so the like-for-like gap between the two
implementations is separated from the gap to the published anchor figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from peftlab.builder import METHOD_INIT_SEED_OFFSET, build_base_model, build_tokenizer
from peftlab.data import load_data, model_inputs
from peftlab.hydra_app import CONFIG_PATH, system_info
from peftlab.train import lr_multiplier, make_loader, seed_everything


def require_past_key_values(base: nn.Module) -> None:
    """Stop with what to do where ``peft``'s prefix tuning cannot feed its prefix to ``base``'s backbone.

    ``peft`` 0.21.2 passes the prefix as ``past_key_values``, which transformers 5.24 renamed ``cache`` in
    its encoders (BERT among them); ``peft`` then fails at the first step. peftlab's own prefix tuning goes
    through the attention call and runs on both sides of the rename.
    """
    import transformers

    backbone = getattr(base, base.base_model_prefix, base)
    if "past_key_values" not in inspect.signature(backbone.forward).parameters:
        raise SystemExit(
            f"peft's prefix tuning cannot run {type(backbone).__name__} on transformers {transformers.__version__}: "
            "its forward has no past_key_values argument (renamed cache in 5.24). Run this script on "
            "transformers 5.23.0, e.g. pip install --no-deps --target /tmp/tf523 transformers==5.23.0, "
            "then PYTHONPATH=/tmp/tf523 python benchmarks/accuracy/peft_reference.py ..."
        )


def peft_method(base: nn.Module, settings) -> nn.Module:
    """``peft.get_peft_model`` with the run's method settings (``full``: the base model, all trainable)."""
    import peft

    method = settings.method
    if method.name == "full":
        return base
    if method.name == "lora":
        config = peft.LoraConfig(
            task_type="SEQ_CLS",
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=list(method.target_modules),
        )
    elif method.name == "prefix_tuning":
        require_past_key_values(base)
        config = peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=method.num_virtual_tokens)
    elif method.name == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=method.num_virtual_tokens)
    else:
        raise ValueError(f"method {method.name!r} has no peft counterpart here")
    return peft.get_peft_model(base, config)


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Classification accuracy over every batch of ``loader``."""
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(**model_inputs(batch)).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    model.train()
    return correct / total


def main() -> None:
    """Compose the settings, train peft's method, write result.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument(
        "--peftlab-draws",
        action="store_true",
        help="draw the method's initial values from the seed peftlab uses, pairing the run with peftlab's",
    )
    args = parser.parse_intermixed_args()  # the flag may sit among the overrides
    result_path = args.out_dir / "result.json"
    if result_path.exists():
        raise SystemExit(f"{result_path}: exists; choose another OUT_DIR")
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
        cfg = compose(config_name="config", overrides=["output_dir=unused", *args.overrides])
    settings = OmegaConf.to_object(cfg)
    system = system_info()  # taken before training, as peftlab train takes its own
    if settings.model.task != "sequence_classification":
        raise SystemExit("peft_reference.py covers sequence classification runs only")
    seed_everything(settings.seed)
    tokenizer = build_tokenizer(settings.model)
    base = build_base_model(settings.model, tokenizer, settings.seed)
    if args.peftlab_draws:
        torch.manual_seed(settings.seed + METHOD_INIT_SEED_OFFSET)
    model = peft_method(base, settings)
    data = load_data(settings.data, tokenizer, settings.model.task, settings.model.num_labels)
    train_loader = make_loader(data.train.examples, settings, tokenizer, shuffle=True)
    test_loader = make_loader(data.valid.examples, settings, tokenizer, shuffle=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.train.lr, weight_decay=settings.train.weight_decay)
    total_steps = settings.train.epochs * len(train_loader)
    schedule = lr_multiplier(settings.train.schedule, settings.train.warmup_steps, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    started, step_seconds = time.perf_counter(), []
    model.train()
    for epoch in range(settings.train.epochs):
        for batch in train_loader.batches(epoch, 0):
            step_started = time.perf_counter()
            logits = model(**model_inputs(batch)).logits
            nn.functional.cross_entropy(logits, batch["labels"]).backward()
            if settings.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, settings.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_seconds.append(time.perf_counter() - step_started)
    result = {
        "status": "ok",
        "implementation": "peft",
        "method": settings.method.name,
        "seed": settings.seed,
        "peftlab_draws": args.peftlab_draws,
        "overrides": args.overrides,
        "metrics": {
            "task_accuracy": accuracy(model, test_loader),
            "steps": len(step_seconds),
            "step_time_ms_p50": statistics.median(step_seconds) * 1e3,
            "trainable_params": sum(p.numel() for p in trainable),
        },
        "wall_time_s": time.perf_counter() - started,
        "system": system,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(result["metrics"]))


if __name__ == "__main__":
    main()
