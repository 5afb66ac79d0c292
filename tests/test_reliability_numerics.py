"""Numerical faults: a NaN/inf loss or gradient stops the run naming the step (the last good checkpoint
intact), or with ``train.skip_nonfinite`` makes that step a counted no-op; a grad scaler skips overflowing
steps and lowers its scale.

Faults are injected from outside the training code, with a global forward hook on the ``PeftLabModel``:
it poisons the logits of chosen training forward passes (NaN logits give a NaN loss; an identity whose
backward returns infinity gives a finite loss with infinite gradients).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from peftlab.checkpoint import Progress, latest_checkpoint, list_checkpoints
from peftlab.methods import PeftLabModel
from peftlab.run_config import RunConfig
from peftlab.train import prepare_run, step_batches, train, train_step

NAN_LOSS, INF_GRADIENT = "nan_loss", "inf_gradient"


class InfiniteGradient(torch.autograd.Function):
    """Identity forward; the backward pass overflows to infinity."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * math.inf


@contextmanager
def faults(at_step: dict[int, str]) -> Iterator[None]:
    """Poison the training forward pass of each 1-based step in ``at_step`` (one micro-batch per step)."""
    forwards = 0

    def poison(module: torch.nn.Module, args: Any, output: Any) -> Any:
        nonlocal forwards
        if not isinstance(module, PeftLabModel) or not module.training:
            return None
        forwards += 1
        kind = at_step.get(forwards)
        if kind == NAN_LOSS:
            output.logits = output.logits * math.nan
        elif kind == INF_GRADIENT:
            output.logits = InfiniteGradient.apply(output.logits)
        return output

    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        yield
    finally:
        handle.remove()


def tiny_run(output_dir: Path, **train_settings: Any) -> RunConfig:
    cfg = RunConfig(output_dir=str(output_dir), seed=11)
    cfg.method.r = 4
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr = 6, 4, 5e-3
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.device = 2, 10, "cpu"
    for name, value in train_settings.items():
        setattr(cfg.train, name, value)
    cfg.logger.console = False
    return cfg


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def checkpoint_optimizer(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "optimizer.safetensors"))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run without faults."""
    run_dir = tmp_path_factory.mktemp("numerics") / "reference"
    train(tiny_run(run_dir))
    return run_dir


@pytest.mark.parametrize(("kind", "message"), [(NAN_LOSS, r"training loss nan"), (INF_GRADIENT, r"gradient norm (inf|nan)")])
def test_nonfinite_step_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint(
    reference: Path, tmp_path: Path, kind: str, message: str
) -> None:
    run_dir = tmp_path / "run"
    with faults({5: kind}), pytest.raises(FloatingPointError, match=rf"^step 5: .*{message}.*train\.skip_nonfinite=true"):
        train(tiny_run(run_dir))
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000004"]
    assert latest_checkpoint(run_dir) == (run_dir / "checkpoints" / "step-000004", [])
    assert same_tensors(checkpoint_weights(run_dir, 4), checkpoint_weights(reference, 4))
    assert [e["step"] for e in events(run_dir)] == [1, 2, 3, 4]
    assert not (run_dir / "adapter").exists() and not (run_dir / "summary.json").exists()
    # once the cause is gone, the run resumes from that checkpoint and ends where the clean run ended
    train(tiny_run(run_dir, resume=True))
    assert same_tensors(checkpoint_weights(run_dir, 6), checkpoint_weights(reference, 6))


def test_skip_nonfinite_turns_bad_steps_into_counted_no_ops(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with faults({2: NAN_LOSS, 4: INF_GRADIENT}):
        summary = train(tiny_run(run_dir, skip_nonfinite=True, checkpoint_every=1))
    assert summary["steps"] == 6 and summary["skipped_nonfinite_steps"] == 2
    logged = {e["step"]: e for e in events(run_dir)}
    assert [step for step, e in logged.items() if e.get("skipped_nonfinite")] == [2, 4]
    assert logged[2]["train_loss"] is None  # NaN is written as null, keeping events.jsonl valid JSON
    assert math.isfinite(logged[4]["train_loss"]) and math.isfinite(summary["final_train_loss"])
    for skipped in (2, 4):  # weights and optimiser state untouched by a skipped step
        assert same_tensors(checkpoint_weights(run_dir, skipped), checkpoint_weights(run_dir, skipped - 1))
        assert same_tensors(checkpoint_optimizer(run_dir, skipped), checkpoint_optimizer(run_dir, skipped - 1))
    assert not same_tensors(checkpoint_weights(run_dir, 3), checkpoint_weights(run_dir, 2))
    assert all(torch.isfinite(t).all() for t in checkpoint_weights(run_dir, 6).values())


def test_grad_scaler_skips_an_overflowing_step_lowers_its_scale_and_trains_on(tmp_path: Path) -> None:
    """The fp16 path's overflow handling, exercised on the CPU: a ``GradScaler`` on fp32 steps.

    Scaling by a power of two is exact, so a scaled step that does not overflow must update the weights
    exactly as the unscaled step does (this also checks gradients are unscaled before clipping).
    """
    plain = prepare_run(tiny_run(tmp_path / "plain"))
    scaled = prepare_run(tiny_run(tmp_path / "scaled"))
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    plain_batches = step_batches(plain, Progress())
    scaled_batches = step_batches(scaled, Progress())

    def weights(parts: Any) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in parts.model.named_trainable_parameters()}

    first_plain = train_step(plain, next(plain_batches)[0])
    first_scaled = train_step(scaled, next(scaled_batches)[0])
    assert first_scaled.loss == first_plain.loss and first_scaled.grad_norm == pytest.approx(first_plain.grad_norm, rel=1e-6)
    assert same_tensors(weights(scaled), weights(plain))
    before = weights(scaled)
    with faults({1: INF_GRADIENT}):
        overflowed = train_step(scaled, next(scaled_batches)[0])  # must not raise: the scaler owns overflow
    assert math.isfinite(overflowed.loss)
    assert same_tensors(weights(scaled), before)
    assert scaled.scaler.get_scale() == 2.0**11
    train_step(scaled, next(scaled_batches)[0])
    assert not same_tensors(weights(scaled), before)
    assert all(torch.isfinite(t).all() for t in weights(scaled).values())
