"""Kill and resume: a training process killed with SIGKILL at any moment, including in the middle of a
checkpoint write, resumes to exactly the adapter and the loss curve of the uninterrupted run; a second run
started in the same folder meanwhile is refused and corrupts nothing.

The kill moments are random but reproducible: they are drawn from a seeded RNG whose seed the test
prints (set ``PEFTLAB_KILL_SEED`` to replay one). The mid-write kill uses a driver that wraps the
checkpoint writer to leave a half-written file and hang, so the kill lands there every time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from peftlab.checkpoint import latest_checkpoint, list_checkpoints
from peftlab.run_config import RunConfig, config_to_dict
from peftlab.run_dir import RunFolderBusyError, lock_holder
from peftlab.train import train

STEPS = 18
# Runs a training in a fresh process. With RELIABILITY_HANG_AT_STEP=N, the optimiser file of checkpoint N
# is written, cut to half its size, and the process hangs there (after touching RELIABILITY_HANG_MARKER).
DRIVER = """
import json, os, sys, time
from pathlib import Path
import peftlab.checkpoint as checkpoint
from peftlab.run_config import config_from_dict
from peftlab.train import train

hang_step = int(os.environ.get("RELIABILITY_HANG_AT_STEP", "0"))
write_tensors = checkpoint.save_file

def write_then_hang(tensors, filename, *args, **kwargs):
    write_tensors(tensors, filename, *args, **kwargs)
    if hang_step and f".step-{hang_step:06d}.tmp" in filename and filename.endswith("optimizer.safetensors"):
        os.truncate(filename, os.path.getsize(filename) // 2)
        Path(os.environ["RELIABILITY_HANG_MARKER"]).touch()
        time.sleep(600)

checkpoint.save_file = write_then_hang
train(config_from_dict(json.loads(sys.argv[1])))
"""
COMPARED_FIELDS = ("step", "train_loss", "train_mean_token_accuracy", "lr", "grad_norm", "tokens", "valid_loss")


def kill_run(output_dir: Path, resume: bool = False) -> RunConfig:
    """LoRA with dropout (the RNG must resume too) and grad accumulation, over several epochs of the shipped data."""
    cfg = RunConfig(output_dir=str(output_dir), seed=5)
    cfg.method.r, cfg.method.dropout = 4, 0.1
    t = cfg.train
    t.max_steps, t.batch_size, t.grad_accum, t.lr, t.warmup_steps = STEPS, 4, 2, 5e-3, 3
    t.checkpoint_every, t.keep_checkpoints, t.eval_every, t.device, t.resume = 3, 2, 6, "cpu", resume
    cfg.logger.console = False
    return cfg


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train in-process on one thread, like the driver processes, so float sums add up in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The uninterrupted run, and how long it took (setup included): the window the kills are drawn from."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("kill") / "reference"
        started = time.perf_counter()
        train(kill_run(run_dir))
        return run_dir, time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


def start_driver(cfg: RunConfig, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    with log.open("wb") as output:
        return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(config_to_dict(cfg))],
                                stdout=output, stderr=subprocess.STDOUT, env=environment)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the training process exited with {process.returncode} early:\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out; process output:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)


def sigkill(process: subprocess.Popen[bytes]) -> bool:
    """SIGKILL ``process``; False if it had already finished on its own."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def curve(run_dir: Path) -> list[tuple[Any, ...]]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [tuple(event.get(name) for name in COMPARED_FIELDS) for event in events]


def assert_same_result(run_dir: Path, reference_dir: Path, context: str) -> None:
    assert curve(run_dir) == curve(reference_dir), context
    expected = load_file(str(reference_dir / "adapter" / "adapter_model.safetensors"))
    actual = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys(), context
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), f"{name} differs; {context}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS, context


def test_sigkill_at_random_moments_then_resume_matches_the_uninterrupted_run(
    reference: tuple[Path, float], tmp_path: Path, one_thread: None
) -> None:
    reference_dir, window = reference
    seed = int(os.environ.get("PEFTLAB_KILL_SEED", random.SystemRandom().randrange(2**31)))
    print(f"kill seed {seed} (replay with PEFTLAB_KILL_SEED={seed})")
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    history = []
    for attempt in range(2):
        log = tmp_path / f"attempt{attempt}.log"
        process = start_driver(kill_run(run_dir, resume=attempt > 0), log)
        wait_for(lambda process=process: f"pid {process.pid} " in (lock_holder(run_dir) or ""), process, log)
        if attempt == 0:  # a second run in the same folder is refused while the first holds it
            with pytest.raises(RunFolderBusyError, match=f"pid {process.pid} "):
                train(kill_run(run_dir, resume=True))
        delay = rng.uniform(0.0, window)
        time.sleep(delay)
        killed = sigkill(process)
        checkpoints = [p.name for p in list_checkpoints(run_dir)]
        history.append(f"attempt {attempt}: {'killed' if killed else 'finished'} after {delay:.2f}s, checkpoints {checkpoints}")
    context = f"kill seed {seed}: " + "; ".join(history)
    print(context)
    train(kill_run(run_dir, resume=True))
    assert_same_result(run_dir, reference_dir, context)


def test_sigkill_during_a_checkpoint_write_falls_back_to_the_previous_checkpoint(
    reference: tuple[Path, float], tmp_path: Path, one_thread: None
) -> None:
    reference_dir, _ = reference
    run_dir, marker, log = tmp_path / "run", tmp_path / "hanging", tmp_path / "driver.log"
    process = start_driver(kill_run(run_dir), log, RELIABILITY_HANG_AT_STEP="9", RELIABILITY_HANG_MARKER=str(marker))
    try:
        wait_for(marker.exists, process, log)
        with pytest.raises(RunFolderBusyError, match=f"pid {process.pid} "):
            train(kill_run(run_dir, resume=True))  # the folder is busy mid-write, too
    finally:
        sigkill(process)
    root = run_dir / "checkpoints"
    half_written = list(root.glob(f".step-000009.tmp-{process.pid}"))
    assert half_written and (half_written[0] / "optimizer.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000003", "step-000006"]
    assert latest_checkpoint(run_dir) == (root / "step-000006", [])
    train(kill_run(run_dir, resume=True))
    assert_same_result(run_dir, reference_dir, "killed while writing checkpoint 9")
    assert sorted(p.name for p in root.iterdir()) == ["step-000015", "step-000018"]  # the half-written one is gone
