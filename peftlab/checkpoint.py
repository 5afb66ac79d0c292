"""Training checkpoints: written atomically, verified by checksum on load, the last K kept.

A checkpoint is a folder ``checkpoints/step-000120/`` holding

- ``model.safetensors``: the trainable parameters, keyed by their names in the ``PeftLabModel``;
- ``optimizer.safetensors``: the optimiser's per-parameter tensors (``state.<index>.<name>``);
- ``state.pt``: everything else (optimiser hyperparameters, scheduler, grad scaler, RNG states, data
  position), plain containers and tensors that load with ``torch.load(weights_only=True)``;
- ``manifest.json``: the step and each file's size and SHA-256, written last.

It is assembled under a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint under a real name. Loading verifies the manifest first; ``latest_checkpoint`` falls back to
the newest checkpoint that verifies, and reports why it skipped the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.fresh_head import with_fresh_head

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
STEP_DIR_PATTERN = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted or does not fit the model; the message names the file."""


@dataclass
class Progress:
    """Where training stands: optimiser steps done, and the next batch to read (epoch, batch index)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0


def step_dir_name(step: int) -> str:
    """``step-000120`` for step 120 (zero-padded so names sort by step)."""
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first (by step)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR_PATTERN.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    scaler: Any = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``progress.step`` atomically, then delete all but the newest ``keep``.

    Leftovers of an interrupted write (hidden ``.step-*`` folders) are removed first: the run holds the
    folder's lock (``peftlab.run_dir``), so no other writer can own them.
    """
    if keep < 1:
        raise ValueError(f"train.keep_checkpoints is {keep}; keep at least 1 checkpoint")
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / step_dir_name(progress.step)
    temp = root / f".{final.name}.tmp-{os.getpid()}"
    temp.mkdir()
    try:
        _write_contents(temp, model, optimizer, scheduler, progress, scaler)
        _replace_dir(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest and each file's size and checksum; return the manifest or raise CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing (the checkpoint was not finished)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        int(manifest["step"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable ({type(error).__name__}: {error})") from None
    if manifest.get("layout") == "sharded":  # written by several ranks (peftlab.distributed)
        from peftlab.distributed import sharded_files_problem

        problem = sharded_files_problem(files) if isinstance(files, dict) else "field 'files' is no object"
        if problem:
            raise CheckpointError(f"{manifest_path}: {problem}")
    elif not isinstance(files, dict) or set(files) != {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE}:
        raise CheckpointError(
            f"{manifest_path}: field 'files' must list {MODEL_FILE}, {OPTIMIZER_FILE}, {STATE_FILE}"
        )
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise CheckpointError(
                f"{file}: {size} bytes, the manifest says {expected.get('bytes')} (truncated?)"
            )
        if _sha256(file) != expected.get("sha256"):
            raise CheckpointError(f"{file}: checksum does not match the manifest (the file is corrupted)")
    return manifest


def latest_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and one message per newer checkpoint skipped (and why)."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            skipped.append(f"skipping checkpoint {path.name}: {error}")
            continue
        return path, skipped
    return None, skipped


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
    fresh_head: bool = False,
) -> Progress:
    """Verify a checkpoint, then restore the trainable parameters (and optimiser, scheduler, scaler, RNG).

    Every file is read and checked before anything is restored, so a bad checkpoint changes nothing.
    ``fresh_head=True`` (weights only) keeps ``model``'s own classification head instead of the saved one.
    """
    path = Path(path)
    if verify_checkpoint(path).get("layout") == "sharded":
        if fresh_head:
            raise CheckpointError(
                f"{path}: a sharded checkpoint cannot start a run with a new head (train.init_head=new); "
                "continue from that run's adapter/ folder instead"
            )
        from peftlab.distributed import load_sharded_checkpoint

        return load_sharded_checkpoint(path, model, optimizer, scheduler, scaler, restore_rng)
    if optimizer is not None:  # resuming: the data position counts batches of one process
        from peftlab.distributed import check_resume_world_size

        check_resume_world_size(path, 1)
    weights = _read_tensors(path / MODEL_FILE)
    state = _read_state(path / STATE_FILE)
    optimizer_tensors = _read_tensors(path / OPTIMIZER_FILE) if optimizer is not None else {}
    if fresh_head:
        if optimizer is not None:
            raise ValueError("a new head starts a new run: its optimiser state cannot be restored")
        weights = with_fresh_head(weights, trainable_state(model), str(path / MODEL_FILE))
    load_trainable_state(model, weights, str(path / MODEL_FILE))
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_state(state["optimizer"], optimizer_tensors))
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        _set_rng_state(state["rng"])
    return Progress(**state["progress"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (what a checkpoint stores of the model)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved trainable parameters in, after checking every name and shape."""
    own = dict(model.named_parameters())
    expected = {name for name, p in own.items() if p.requires_grad}
    unknown = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if unknown or missing:
        detail = f"unknown tensor {unknown[0]!r}" if unknown else f"tensor {missing[0]!r} is missing"
        raise CheckpointError(f"{source}: {detail}; the checkpoint was made with a different model or method")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def _write_contents(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    scaler: Any,
) -> None:
    save_file(_contiguous(trainable_state(model)), str(directory / MODEL_FILE))
    optimizer_meta, optimizer_tensors = _split_optimizer_state(optimizer.state_dict())
    save_file(_contiguous(optimizer_tensors), str(directory / OPTIMIZER_FILE))
    state = {
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
        "progress": vars(progress).copy(),
    }
    torch.save(state, directory / STATE_FILE)
    files = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        _fsync_file(directory / name)
        files[name] = {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
    manifest = {"format": FORMAT_VERSION, "step": progress.step, "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync_file(directory / MANIFEST_FILE)
    _fsync_dir(directory)


def _replace_dir(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` (e.g. a damaged one) is swapped out first."""
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        os.replace(source, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(source, target)
    _fsync_dir(target.parent)


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Move every tensor of the optimiser's per-parameter state into a flat dict for safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[int, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        meta_state[index] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                meta_state[index][name] = value
    return {"state": meta_state, "param_groups": state_dict["param_groups"]}, tensors


def _optimizer_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {int(index): dict(entries) for index, entries in meta["state"].items()}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_state(path: Path) -> dict[str, Any]:
    """``state.pt`` with ``torch.load(weights_only=True)``: plain containers and tensors only, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds Python objects beyond plain containers and tensors, and unpickling "
            "them could run code (peftlab never writes such a file; it was replaced or tampered with)"
        ) from None
    except Exception as error:  # torch.load raises many types on a damaged or foreign file
        raise CheckpointError(f"{path}: cannot load ({type(error).__name__}: {_one_line(error)})") from None
    expected_progress = {f.name for f in fields(Progress)}
    if (
        not isinstance(state, dict)
        or not {"optimizer", "scheduler", "rng", "progress"} <= set(state)
        or not isinstance(state["progress"], dict)
        or set(state["progress"]) != expected_progress
    ):
        raise CheckpointError(f"{path}: not a peftlab checkpoint state (fields missing or unexpected)")
    return state


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: cannot read tensors ({_one_line(error)})") from None


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
