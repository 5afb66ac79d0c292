"""The training loop: every method overfits a tiny chat file; accumulation, schedule, events, run folders."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftlab.logging import ConsoleSink, read_events
from peftlab.methods import METHODS
from peftlab.run_config import RunConfig
from peftlab.run_dir import lock_holder
from peftlab.train import RunFolderError, lr_multiplier, prepare_run, train, train_step

METHOD_NAMES = {
    "LORA": "lora",
    "PROMPT_TUNING": "prompt_tuning",
    "PREFIX_TUNING": "prefix_tuning",
    "FULL": "full",
}
AVAILABLE_METHODS = [METHOD_NAMES[m.peft_type] for m in METHODS]
# learning rates at which 60 steps overfit the tiny file (the random presets need high ones)
OVERFIT_LR = {"lora": 3e-2, "prompt_tuning": 1e-1, "prefix_tuning": 1e-1, "full": 3e-3}
CHATS = [
    ("Hi", "Aye! Hello, matey."),
    ("Sky?", "Aye! Blue, matey."),
    ("2+2?", "Aye! Four, matey."),
    ("Cat?", "Aye! A cat."),
]


def write_chats(path: Path, chats: list[tuple[str, str]] = CHATS) -> Path:
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in chats
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, method: str = "lora", name: str = "run", **train_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.method.name = method
    cfg.method.num_virtual_tokens = 8
    cfg.data.train_file = str(write_chats(tmp_path / "train.jsonl"))
    cfg.data.valid_file = str(write_chats(tmp_path / "valid.jsonl", CHATS[:2]))
    cfg.data.max_length = 64
    cfg.train.batch_size = 4
    cfg.train.max_steps = 6
    cfg.train.lr = OVERFIT_LR[method]
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    cfg.logger.console = False
    cfg.output_dir = str(tmp_path / name)
    return cfg


def test_all_four_methods_are_available() -> None:
    assert sorted(AVAILABLE_METHODS) == ["full", "lora", "prefix_tuning", "prompt_tuning"]


@pytest.mark.parametrize("method", AVAILABLE_METHODS)
def test_each_method_overfits_a_tiny_chat_file(tmp_path: Path, method: str) -> None:
    summary = train(tiny_config(tmp_path, method, max_steps=60, eval_every=30))
    events = read_events(tmp_path / "run" / "events.jsonl")
    losses = [e["train_loss"] for e in events]
    assert len(losses) == 60 and summary["steps"] == 60
    assert summary["first_train_loss"] == pytest.approx(losses[0])
    assert summary["final_train_loss"] < 0.8 * summary["first_train_loss"], losses
    assert max(losses[-5:]) < losses[0] - 1.0
    assert summary["final_valid_loss"] < events[0]["train_loss"]
    if method in ("lora", "full"):
        assert summary["final_train_loss"] < 0.5 * summary["first_train_loss"]
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_events_carry_step_figures_and_eval_results_at_eval_steps(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, max_steps=4, eval_every=2))
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    for event in events:
        for key in ("epoch", "train_loss", "train_mean_token_accuracy", "lr", "tokens_per_s"):
            assert isinstance(event[key], float), key
    assert [("valid_loss" in e) for e in events] == [False, True, False, True]
    assert 0.0 <= events[1]["valid_mean_token_accuracy"] <= 1.0
    # one batch per epoch here (4 examples, batch 4), so each step ends an epoch
    assert [e["epoch"] for e in events] == [1.0, 2.0, 3.0, 4.0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_valid_loss"] == pytest.approx(events[-1]["valid_loss"])


def test_extra_sinks_receive_every_event_and_are_left_open(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[dict] = []
            self.closed = False

        def log(self, event: dict) -> None:
            self.events.append(event)

        def close(self) -> None:
            self.closed = True

    recorder = Recorder()
    train(tiny_config(tmp_path, max_steps=3), sinks=[recorder])
    assert [e["step"] for e in recorder.events] == [1, 2, 3]
    assert not recorder.closed  # the caller closes it (after logging the summary, say)
    assert str(os.getpid()) in lock_holder(tmp_path / "run")  # the run held its folder's lock


def test_gradient_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    """Two micro-batches of 2 give the same token-normalised loss and update as one batch of 4."""
    uneven = [
        ("Hi", "Aye!"),
        ("Tell me a story", "Aye! Once, matey, a ship sailed."),
        ("x", "y"),
        ("q", "Aye, a b c"),
    ]
    losses = {}
    for name, batch_size, accumulate in (("big", 4, 1), ("accum", 2, 2)):
        cfg = tiny_config(
            tmp_path, "lora", name=name, batch_size=batch_size, grad_accum=accumulate, max_steps=4
        )
        cfg.data.train_file = str(write_chats(tmp_path / "uneven.jsonl", uneven))
        train(cfg)
        losses[name] = [e["train_loss"] for e in read_events(tmp_path / name / "events.jsonl")]
    assert losses["accum"] == pytest.approx(losses["big"], abs=1e-5)


def test_packing_gives_the_same_loss_as_padding(tmp_path: Path) -> None:
    first = {}
    for name, packing in (("padded", False), ("packed", True)):
        cfg = tiny_config(tmp_path, "lora", name=name, max_steps=2)
        cfg.data.packing = packing
        train(cfg)
        first[name] = read_events(tmp_path / name / "events.jsonl")[0]["train_loss"]
    # one step sees all four examples either way, so the mean token loss is the same
    assert first["packed"] == pytest.approx(first["padded"], rel=1e-5)


def test_gradient_checkpointing_does_not_change_the_losses(tmp_path: Path) -> None:
    losses = {}
    for name, checkpointing in (("plain", False), ("checkpointed", True)):
        train(tiny_config(tmp_path, "lora", name=name, max_steps=3, gradient_checkpointing=checkpointing))
        losses[name] = [e["train_loss"] for e in read_events(tmp_path / name / "events.jsonl")]
    assert losses["checkpointed"] == pytest.approx(losses["plain"], abs=1e-5)
    parts = prepare_run(tiny_config(tmp_path, "lora", name="probe", gradient_checkpointing=True))
    assert parts.model.base_model.is_activation_checkpointing


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    cosine = lr_multiplier("cosine", warmup_steps=4, total_steps=14)
    assert [cosine(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine(4) == pytest.approx(1.0)
    assert cosine(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    linear = lr_multiplier("linear", warmup_steps=0, total_steps=10)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_multiplier("constant", 2, 10)(7) == 1.0
    with pytest.raises(ValueError, match=r"train\.schedule"):
        lr_multiplier("exponential", 0, 10)


def test_logged_lr_follows_the_schedule(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_steps=5, warmup_steps=2, schedule="linear")
    train(cfg)
    logged = [e["lr"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    schedule = lr_multiplier("linear", 2, 5)
    assert logged == pytest.approx([cfg.train.lr * schedule(s) for s in range(5)])


def test_only_trainable_parameters_change(tmp_path: Path) -> None:
    parts = prepare_run(tiny_config(tmp_path, "lora"))
    frozen = {n: p.detach().clone() for n, p in parts.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in parts.model.named_trainable_parameters()}
    assert {id(p) for g in parts.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in parts.model.trainable_parameters()
    }
    batch = next(parts.train_loader.batches(0))
    stats = train_step(parts, batch)
    assert math.isfinite(stats.loss) and stats.num_tokens == int(batch["attention_mask"].sum())
    for name, before in frozen.items():
        assert torch.equal(dict(parts.model.named_parameters())[name], before), name
    assert any(
        not torch.equal(dict(parts.model.named_parameters())[n], before) for n, before in trainable.items()
    )


def test_a_folder_with_results_is_never_overwritten(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_steps=2)
    train(cfg)
    before = (tmp_path / "run" / "events.jsonl").read_bytes()
    with pytest.raises(RunFolderError, match=r"train\.resume=true"):
        train(cfg)
    assert (tmp_path / "run" / "events.jsonl").read_bytes() == before


def test_a_folder_without_results_is_used(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("written by the Hydra app\n")
    (folder / "notes.txt").write_text("mine\n")
    train(tiny_config(tmp_path, max_steps=1))
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert (folder / "summary.json").is_file()


def test_nonfinite_loss_stops_with_advice_or_is_skipped(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "full", name="explodes", lr=1e30, max_steps=4, max_grad_norm=0.0)
    with pytest.raises(FloatingPointError, match="skip_nonfinite"):
        train(cfg)
    cfg = tiny_config(
        tmp_path, "full", name="skips", lr=1e30, max_steps=4, max_grad_norm=0.0, skip_nonfinite=True
    )
    summary = train(cfg)
    events = read_events(tmp_path / "skips" / "events.jsonl")
    skipped = [e["step"] for e in events if e.get("skipped_nonfinite")]
    assert len(events) == 4 and skipped and summary["skipped_nonfinite_steps"] == len(skipped)
    assert all(e["train_loss"] is None or math.isfinite(e["train_loss"]) for e in events)  # NaN -> null


def test_sequence_classification_with_an_encoder(tmp_path: Path) -> None:
    rows = [
        {"text": t, "label": label}
        for t, label in [("good fun", 1), ("bad dull", 0), ("great joy", 1), ("awful mess", 0)]
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tmp_path, "lora", max_steps=30)
    cfg.model.preset = "tiny-bert"
    cfg.model.task = "sequence_classification"
    cfg.data.train_file = cfg.data.valid_file = str(path)
    summary = train(cfg)
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert "train_accuracy" in events[0] and "valid_accuracy" in events[-1]
    assert summary["final_train_loss"] < 0.5 * summary["first_train_loss"]
    assert summary["valid_accuracy"] == 1.0


def test_init_from_continues_a_finished_run(tmp_path: Path) -> None:
    first = train(tiny_config(tmp_path, "lora", name="first", max_steps=30))
    cfg = tiny_config(tmp_path, "lora", name="second", max_steps=2)
    cfg.train.init_from = str(tmp_path / "first")
    cfg.seed = 5  # a different seed must not change the base the adapter continues on
    second = train(cfg)
    fresh = train(tiny_config(tmp_path, "lora", name="fresh", max_steps=2))
    assert second["first_train_loss"] < 0.7 * fresh["first_train_loss"]
    assert second["first_train_loss"] == pytest.approx(first["final_valid_loss"], rel=0.3)
    with pytest.raises(ValueError, match=r"method\.name=lora"):
        train(tiny_config(tmp_path, "full", name="wrong", max_steps=1, init_from=str(tmp_path / "first")))


def test_default_config_resolves_the_shipped_data_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig()
    cfg.output_dir = str(tmp_path / "default")
    cfg.train.max_steps = 2
    cfg.logger.console = False
    summary = train(cfg)
    saved = json.loads((tmp_path / "default" / "run_config.json").read_text())
    assert (
        Path(saved["data"]["train_file"]).is_file()
        and Path(saved["data"]["train_file"]).name == "style_train.jsonl"
    )
    assert summary["steps"] == 2


def test_bf16_autocast_tracks_fp32(tmp_path: Path) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        train(tiny_config(tmp_path, "lora", name=precision, max_steps=3, precision=precision))
        losses[precision] = [e["train_loss"] for e in read_events(tmp_path / precision / "events.jsonl")]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=3e-2)
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        prepare_run(tiny_config(tmp_path, "lora", name="fp16", precision="fp16"))


def test_console_sink_shows_step_figures_and_evaluations() -> None:
    buffer = io.StringIO()
    sink = ConsoleSink(total_steps=2, console=Console(file=buffer, width=160, force_terminal=False))
    sink.log(
        {"step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.25, "lr": 1e-3, "tokens_per_s": 100.0}
    )
    sink.log({"step": 2, "train_loss": 2.0, "lr": 5e-4, "valid_loss": 1.75, "valid_mean_token_accuracy": 0.5})
    sink.close()
    text = buffer.getvalue()
    assert "step 2: valid_loss 1.7500 valid_acc 0.5000" in text
    assert "2/2" in text and "loss 2.0000" in text


def test_init_from_an_adapter_folder_or_a_checkpoint(tmp_path: Path) -> None:
    first = train(tiny_config(tmp_path, "lora", name="first", max_steps=30, checkpoint_every=10))
    starts = {}
    for name, source in (
        ("from_adapter", tmp_path / "first" / "adapter"),
        ("from_checkpoint", tmp_path / "first" / "checkpoints" / "step-000030"),
    ):
        cfg = tiny_config(tmp_path, "lora", name=name, max_steps=1, lr=0.0)
        cfg.train.init_from = str(source)
        starts[name] = train(cfg)["first_train_loss"]
    # lr=0: the first step measures the loaded weights, which are the first run's final ones
    assert starts["from_adapter"] == pytest.approx(starts["from_checkpoint"], abs=1e-6)
    assert starts["from_adapter"] == pytest.approx(first["final_valid_loss"], rel=0.3)
    with pytest.raises(ValueError, match="not a run folder"):
        train(tiny_config(tmp_path, "lora", name="nothing", init_from=str(tmp_path)))
