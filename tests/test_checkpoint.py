"""Checkpoints: resume reproduces the uninterrupted run; files are safe to load, verified, pruned, and a
damaged latest checkpoint falls back to the previous good one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)
from peftlab.logging import read_events
from peftlab.run_config import RunConfig
from peftlab.train import prepare_run, train

CHATS = [
    ("Hi", "Aye! Hello."),
    ("Sky?", "Aye! Blue, matey."),
    ("2+2?", "Four."),
    ("Cat?", "A cat."),
    ("Dog?", "Aye! A dog."),
]


class Crash(Exception):
    """Stands for a crash or a kill in the middle of a run."""


class CrashAtStep:
    """A sink that raises once the run reaches ``step`` (after ``events.jsonl`` got the event)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log(self, event: dict) -> None:
        if event["step"] == self.step:
            raise Crash(f"killed at step {self.step}")

    def close(self) -> None:
        pass


def run_config(tmp_path: Path, method: str, name: str, **train_fields) -> RunConfig:
    data = tmp_path / "train.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    cfg = RunConfig()
    cfg.method.name = method
    cfg.method.dropout = 0.1  # LoRA dropout draws random numbers: resume must restore the RNG too
    cfg.method.num_virtual_tokens = 4
    cfg.data.train_file = cfg.data.valid_file = str(data)
    cfg.data.max_length = 64
    cfg.train.batch_size = 2  # three batches per epoch, the last one smaller
    cfg.train.max_steps = 10
    cfg.train.checkpoint_every = 4  # step 4 ends mid-epoch: resume must continue inside the epoch
    cfg.train.eval_every = 5
    cfg.train.warmup_steps = 2
    cfg.train.lr = 1e-2
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    cfg.logger.console = False
    cfg.output_dir = str(tmp_path / name)
    return cfg


def losses(run_dir: Path) -> list[tuple[int, float, float | None]]:
    return [(e["step"], e["train_loss"], e.get("valid_loss")) for e in read_events(run_dir / "events.jsonl")]


def assert_same_curve(
    got: list[tuple[int, float, float | None]], expected: list[tuple[int, float, float | None]], tol: float = 1e-6
) -> None:
    """Same steps, same evaluation steps, and every train/valid loss within ``tol``."""
    assert [step for step, _, _ in got] == [step for step, _, _ in expected]
    for (_, loss_a, valid_a), (_, loss_b, valid_b) in zip(expected, got, strict=True):
        assert loss_b == pytest.approx(loss_a, abs=tol)
        assert (valid_a is None) == (valid_b is None)
        if valid_a is not None:
            assert valid_b == pytest.approx(valid_a, abs=tol)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "full"])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path: Path, method: str) -> None:
    whole = train(run_config(tmp_path, method, "whole"))
    interrupted = run_config(tmp_path, method, "interrupted")
    with pytest.raises(Crash):
        train(interrupted, sinks=[CrashAtStep(7)])
    assert [p.name for p in list_checkpoints(tmp_path / "interrupted")] == ["step-000004"]
    interrupted.train.resume = True
    resumed = train(interrupted)
    got = losses(tmp_path / "interrupted")
    assert [step for step, _, _ in got] == list(range(1, 11))
    assert_same_curve(got, losses(tmp_path / "whole"))
    assert resumed["final_valid_loss"] == pytest.approx(whole["final_valid_loss"], abs=1e-6)
    assert resumed["tokens"] == whole["tokens"]
    final_a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-000010" / MODEL_FILE))
    final_b = load_file(str(tmp_path / "interrupted" / "checkpoints" / "step-000010" / MODEL_FILE))
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], atol=1e-6, rtol=0)


def test_checkpoint_files_are_safe_verified_and_pruned(tmp_path: Path) -> None:
    train(run_config(tmp_path, "lora", "run", keep_checkpoints=2))
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000008", "step-000010"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    latest = run_dir / "checkpoints" / "step-000010"
    manifest = json.loads((latest / MANIFEST_FILE).read_text())
    assert manifest["step"] == 10
    for name, entry in manifest["files"].items():
        data = (latest / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state = torch.load(latest / STATE_FILE, weights_only=True)  # no arbitrary pickle needed
    assert state["progress"]["step"] == 10
    fresh = prepare_run(run_config(tmp_path, "lora", "unused"))
    assert set(load_file(str(latest / MODEL_FILE))) == {
        name for name, _ in fresh.model.named_trainable_parameters()
    }


def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, "lora", "run", max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    cfg_whole = run_config(tmp_path, "lora", "whole", max_steps=6, checkpoint_every=2, keep_checkpoints=3)
    train(cfg_whole)
    with pytest.raises(Crash):
        train(cfg, sinks=[CrashAtStep(5)])
    run_dir = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000004"]
    weights = run_dir / "checkpoints" / "step-000004" / MODEL_FILE
    damaged = bytearray(weights.read_bytes())
    damaged[-5] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        verify_checkpoint(weights.parent)
    found, skipped = latest_checkpoint(run_dir)
    assert found is not None and found.name == "step-000002"
    assert "step-000004" in skipped[0] and "corrupted" in skipped[0]
    cfg.train.resume = True
    with pytest.warns(UserWarning, match="skipping checkpoint step-000004"):
        train(cfg)
    assert_same_curve(losses(run_dir), losses(tmp_path / "whole"))


def test_truncated_or_unfinished_checkpoints_are_reported(tmp_path: Path) -> None:
    train(run_config(tmp_path, "lora", "run", max_steps=4, checkpoint_every=2))
    run_dir = tmp_path / "run"
    second, first = reversed(list_checkpoints(run_dir))
    state = second / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(second)
    (first / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="not finished"):
        verify_checkpoint(first)
    found, skipped = latest_checkpoint(run_dir)
    assert found is None and len(skipped) == 2
    cfg = run_config(tmp_path, "lora", "run", max_steps=4, checkpoint_every=2, resume=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable checkpoint"):
        train(cfg)


def test_state_file_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    train(run_config(tmp_path, "lora", "run", max_steps=2, checkpoint_every=2))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    torch.save({"progress": Payload()}, checkpoint / STATE_FILE)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    data = (checkpoint / STATE_FILE).read_bytes()
    manifest["files"][STATE_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # the checksums agree, so only the loader stands guard
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))
    model = prepare_run(run_config(tmp_path, "lora", "unused")).model
    before = {n: p.clone() for n, p in model.named_trainable_parameters()}
    with pytest.raises(CheckpointError, match="refused: it holds Python objects"):
        load_checkpoint(checkpoint, model)
    assert not marker.exists()
    unchanged = [torch.equal(p, before[n]) for n, p in model.named_trainable_parameters()]
    assert all(unchanged)  # nothing half-loaded


def test_a_crash_before_the_first_checkpoint_restarts_on_the_same_curve(tmp_path: Path) -> None:
    train(run_config(tmp_path, "lora", "whole", max_steps=4, checkpoint_every=0))
    crashed = run_config(tmp_path, "lora", "crashed", max_steps=4, checkpoint_every=0)
    with pytest.raises(Crash):
        train(crashed, sinks=[CrashAtStep(2)])
    assert list_checkpoints(tmp_path / "crashed") == [] and (tmp_path / "crashed" / "base_model").is_dir()
    crashed.train.resume = True
    train(crashed)  # starts over on the saved base weights; the method's init must not change
    assert_same_curve(losses(tmp_path / "crashed"), losses(tmp_path / "whole"))
