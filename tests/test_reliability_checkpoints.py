"""Damaged checkpoints: never picked up half-written, always refused with the file named, and resume falls
back to the newest checkpoint that verifies, continuing exactly as the uninterrupted run did."""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.builder import build_for_run
from peftlab.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from peftlab.run_config import RunConfig
from peftlab.train import train

STEPS = 6


def tiny_run(output_dir: Path, resume: bool = False) -> RunConfig:
    """LoRA with dropout (so the RNG state matters) on the shipped chat data; 6 steps, checkpoints at 2, 4, 6."""
    cfg = RunConfig(output_dir=str(output_dir), seed=7)
    cfg.method.r, cfg.method.dropout = 4, 0.1
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = STEPS, 4, 5e-3, 2
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.eval_every = 2, 3, 3
    cfg.train.device, cfg.train.resume = "cpu", resume
    cfg.logger.console = False
    return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, kept read-only: tests copy it before damaging anything."""
    run_dir = tmp_path_factory.mktemp("reliability") / "reference"
    train(tiny_run(run_dir))
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000004", "step-000006"]
    return run_dir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def losses(run_dir: Path) -> list[tuple[int, float, float | None]]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [(e["step"], e["train_loss"], e.get("valid_loss")) for e in events]


# --- ways to damage a checkpoint: (name, damage, fragment the error must contain) -----------------------


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("flipped byte in the weights", lambda c: flip_byte(c / MODEL_FILE), MODEL_FILE, "checksum does not match"),
    ("truncated optimizer state", lambda c: truncate(c / OPTIMIZER_FILE), OPTIMIZER_FILE, "truncated?"),
    ("appended bytes", lambda c: (c / STATE_FILE).write_bytes((c / STATE_FILE).read_bytes() + b"junk"), STATE_FILE, "bytes, the manifest says"),
    ("deleted state file", lambda c: (c / STATE_FILE).unlink(), STATE_FILE, "missing"),
    ("no manifest (never finished)", lambda c: (c / MANIFEST_FILE).unlink(), MANIFEST_FILE, "was not finished"),
    ("manifest not JSON", lambda c: (c / MANIFEST_FILE).write_bytes(b'{"step": 6, "fil'), MANIFEST_FILE, "unreadable"),
    ("manifest lists other files", lambda c: (c / MANIFEST_FILE).write_text('{"step": 6, "files": {}}'), MANIFEST_FILE, "must list"),
]


@pytest.mark.parametrize(("damage", "file_name", "reason"), [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_damaged_newest_checkpoint_is_refused_naming_the_file_and_skipped(
    run_copy: Path, damage: Callable[[Path], None], file_name: str, reason: str
) -> None:
    newest = run_copy / "checkpoints" / "step-000006"
    damage(newest)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(newest, torch.nn.Linear(1, 1))
    assert str(newest / file_name) in str(caught.value) and reason in str(caught.value)
    chosen, skipped = latest_checkpoint(run_copy)
    assert chosen == run_copy / "checkpoints" / "step-000004"
    assert len(skipped) == 1 and skipped[0].startswith("skipping checkpoint step-000006: ") and reason in skipped[0]


def test_resume_falls_back_to_the_previous_good_checkpoint_and_matches_the_uninterrupted_run(
    finished_run: Path, run_copy: Path
) -> None:
    truncate(run_copy / "checkpoints" / "step-000006" / MODEL_FILE)
    (run_copy / "adapter").rename(run_copy / "adapter.before")
    with pytest.warns(UserWarning, match=r"skipping checkpoint step-000006: .*model\.safetensors: .* bytes"):
        summary = train(tiny_run(run_copy, resume=True))
    assert summary["steps"] == STEPS
    assert losses(run_copy) == losses(finished_run)  # steps 5 and 6 replayed, each event once
    reference, resumed = adapter_tensors(finished_run), adapter_tensors(run_copy)
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name
    assert latest_checkpoint(run_copy) == (run_copy / "checkpoints" / "step-000006", [])  # rewritten, good again


def test_resume_with_no_usable_checkpoint_fails_saying_why_for_each(run_copy: Path) -> None:
    for checkpoint in list_checkpoints(run_copy):
        flip_byte(checkpoint / OPTIMIZER_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no usable checkpoint to resume from") as caught:
            train(tiny_run(run_copy, resume=True))
    for step in (2, 4, 6):
        assert f"skipping checkpoint step-{step:06d}: " in str(caught.value)


def test_half_written_and_foreign_folders_are_never_picked_up(run_copy: Path) -> None:
    root = run_copy / "checkpoints"
    newest = root / "step-000006"
    shutil.copytree(newest, root / ".step-000008.tmp-4242")  # what a crash mid-write leaves: a temporary name
    truncate(root / ".step-000008.tmp-4242" / OPTIMIZER_FILE)
    (root / "step-000010-backup").mkdir()  # not a checkpoint name
    (root / "step-000012").write_text("a file, not a folder")
    assert [p.name for p in list_checkpoints(run_copy)] == ["step-000002", "step-000004", "step-000006"]
    assert latest_checkpoint(run_copy) == (newest, [])


def test_checkpoint_state_holding_a_code_running_pickle_is_refused_without_running_it(run_copy: Path) -> None:
    marker = run_copy / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return builtins.exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    checkpoint = run_copy / "checkpoints" / "step-000006"
    torch.save({"progress": Payload()}, checkpoint / STATE_FILE)
    # the attacker also rewrites the manifest, so the checksums agree and only the loader stands in the way
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    data = (checkpoint / STATE_FILE).read_bytes()
    manifest["files"][STATE_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))
    model, _ = build_for_run(tiny_run(run_copy))  # the model the checkpoint belongs to: its weights load fine
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}: refused: it holds Python objects") as caught:
        load_checkpoint(checkpoint, model)
    assert not marker.exists(), "unpickling ran the payload"
    assert "\n" not in str(caught.value) and "could run code" in str(caught.value)
