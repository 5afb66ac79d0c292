"""The optimiser: LoRA+ rates checked against peft's ``create_loraplus_optimizer`` on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from peft.optimizers import create_loraplus_optimizer
from test_checkpoint import Crash, CrashAtStep, assert_same_curve, losses, run_config
from test_lora import (
    copy_adapter_into_peft,
    peft_config_like,
    peft_parameter_name,
    random_batch,
    randomize_adapter,
    relative_error,
    twin_models,
)

import peftlab
from peftlab import LoRAConfig
from peftlab.bench import PeftReferenceModel, peft_optimizer
from peftlab.methods.lora import lora_layers
from peftlab.optimizer import build_optimizer, check_loraplus_lr_ratio, parameter_groups
from peftlab.run_config import TrainConfig
from peftlab.train import prepare_run, train

LR = 1e-3
RATIO = 16.0


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, preset: str, steps: int) -> None:
    """A few AdamW steps on fresh random batches, loss = sum of logits times a fixed random upstream."""
    for step in range(steps):
        logits = model(**random_batch(preset, seed=100 + step)).logits
        upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(200 + step))
        optimizer.zero_grad()
        (logits * upstream).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("ratio", [1.0, RATIO])
def test_lora_plus_steps_match_peft_create_loraplus_optimizer(ratio: float) -> None:
    config = LoRAConfig(r=4, alpha=8.0, target_modules="all-linear")
    ours_base, theirs_base = twin_models("tiny-llama")
    ours = peftlab.apply(ours_base, config)
    theirs = get_peft_model(theirs_base, peft_config_like(config))
    randomize_adapter(ours, seed=3)
    copy_adapter_into_peft(ours, theirs)
    start = {name: p.detach().clone() for name, p in ours.base_model.named_parameters() if p.requires_grad}

    train_steps(ours, build_optimizer(ours, LR, weight_decay=0.0, loraplus_lr_ratio=ratio), "tiny-llama", 3)
    train_steps(
        theirs,
        create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=ratio),
        "tiny-llama",
        3,
    )

    theirs_params = dict(theirs.named_parameters())
    for name, parameter in ours.base_model.named_parameters():
        if not parameter.requires_grad:
            continue
        expected = theirs_params[peft_parameter_name(name, [])]
        moved = (expected.detach() - start[name]).abs().max().item()
        # Adam's first steps move every entry by about its rate: B by lr × ratio, A by lr
        assert moved == pytest.approx(3 * LR * (ratio if name.endswith("lora_B") else 1.0), rel=0.35), name
        assert relative_error(parameter.detach() - start[name], expected.detach() - start[name]) < 1e-4, name


def test_only_lora_b_gets_the_faster_rate_on_a_classifier() -> None:
    model = peftlab.apply(twin_models("tiny-bert")[0], LoRAConfig(r=4, alpha=8.0, task_type="SEQ_CLS"))
    slow, fast = parameter_groups(model, LR, RATIO)
    layers = lora_layers(model.base_model).values()
    assert fast["lr"] == LR * RATIO and {id(p) for p in fast["params"]} == {
        id(layer.lora_B) for layer in layers
    }
    names = {id(p): n for n, p in model.named_parameters()}
    slow_names = sorted(names[id(p)] for p in slow["params"])
    assert slow["lr"] == LR and any("classifier" in n for n in slow_names)
    assert any(n.endswith(".bias") for n in slow_names)  # the head's bias: peft would give it the B rate
    assert len(slow["params"]) + len(fast["params"]) == len(model.trainable_parameters())
    assert len(parameter_groups(model, LR, 1.0)) == 1  # plain LoRA: one group, as before


def test_a_ratio_for_a_model_without_lora_is_refused() -> None:
    prompt = peftlab.apply(twin_models("tiny-llama")[0], peftlab.PromptTuningConfig(num_virtual_tokens=4))
    with pytest.raises(ValueError, match="no trainable LoRA layer"):
        parameter_groups(prompt, LR, RATIO)
    with pytest.raises(ValueError, match=r"method 'prompt_tuning' has no LoRA layers"):
        check_loraplus_lr_ratio(RATIO, "prompt_tuning")
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="must be a finite number above 0"):
            check_loraplus_lr_ratio(bad, "lora")
    check_loraplus_lr_ratio(1.0, "prompt_tuning")


def test_run_settings_are_checked_before_a_model_loads(tmp_path: Path, monkeypatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("peftlab.train.build_for_run", forbidden)
    with pytest.raises(ValueError, match="has no LoRA layers"):
        train(run_config(tmp_path, "prefix_tuning", "run", loraplus_lr_ratio=RATIO))


def test_a_run_with_lora_plus_resumes_with_both_rates(tmp_path: Path) -> None:
    parts = prepare_run(run_config(tmp_path, "lora", "unused", loraplus_lr_ratio=RATIO))
    assert [group["initial_lr"] for group in parts.optimizer.param_groups] == [1e-2, 1e-2 * RATIO]
    whole = train(run_config(tmp_path, "lora", "whole", loraplus_lr_ratio=RATIO))
    plain = train(run_config(tmp_path, "lora", "plain"))
    assert whole["final_train_loss"] != pytest.approx(plain["final_train_loss"], abs=1e-4)
    interrupted = run_config(tmp_path, "lora", "interrupted", loraplus_lr_ratio=RATIO)
    with pytest.raises(Crash):
        train(interrupted, sinks=[CrashAtStep(7)])
    interrupted.train.resume = True
    train(interrupted)
    assert_same_curve(losses(tmp_path / "interrupted"), losses(tmp_path / "whole"))


def test_the_peft_reference_benchmark_run_uses_peft_own_lora_plus() -> None:
    config = LoRAConfig(r=4, alpha=8.0)
    reference = PeftReferenceModel(get_peft_model(twin_models("tiny-llama")[1], peft_config_like(config)))
    optimizer = peft_optimizer(reference, TrainConfig(lr=LR, loraplus_lr_ratio=RATIO))
    names = {id(p): n for n, p in reference.named_parameters()}
    rates = {
        names[id(p)].split(".")[-3]: group["lr"] for group in optimizer.param_groups for p in group["params"]
    }
    assert rates == {"lora_A": LR, "lora_B": LR * RATIO}
    assert len(peft_optimizer(reference, TrainConfig(lr=LR)).param_groups) == 1
