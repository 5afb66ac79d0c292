"""The run-folder lock: one run per folder at a time, re-entrant within a thread, gone when its process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import peftlab.run_dir as run_dir_module
from peftlab.run_dir import LOCK_FILE, RunFolderBusyError, claim_run_dir, lock_holder

# A bare Python process that takes the lock with peftlab's own code, loaded from the file so that the package
# (and torch) is not imported: it starts in milliseconds.
HOLD_LOCK = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_dir", sys.argv[2])
run_dir = sys.modules["run_dir"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_dir)
with run_dir.claim_run_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(run_dir: Path) -> subprocess.Popen[str]:
    """A separate process holding ``run_dir``'s lock; returns once it holds it."""
    module_file = Path(run_dir_module.__file__)
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), str(module_file)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_claim_creates_the_folder_and_records_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "new" / "run"
    with claim_run_dir(run_dir) as claimed:
        assert claimed == run_dir.resolve() and run_dir.is_dir()
        assert lock_holder(run_dir).startswith(f"pid {os.getpid()} on ")
    assert (run_dir / LOCK_FILE).is_file()


def test_claim_is_reentrant_in_one_thread_and_released_by_the_outermost_exit(tmp_path: Path) -> None:
    with claim_run_dir(tmp_path), claim_run_dir(tmp_path / "sub" / ".."):
        pass
    # released: another thread can take it now
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            with claim_run_dir(tmp_path):
                pass
        except BaseException as error:  # handed to the main thread
            errors.append(error)

    worker = threading.Thread(target=claim)
    worker.start()
    worker.join()
    assert errors == []


def test_another_thread_of_the_same_process_is_refused(tmp_path: Path) -> None:
    caught: list[BaseException] = []

    def claim() -> None:
        try:
            with claim_run_dir(tmp_path):
                pass
        except RunFolderBusyError as error:
            caught.append(error)

    with claim_run_dir(tmp_path):
        worker = threading.Thread(target=claim)
        worker.start()
        worker.join()
    assert len(caught) == 1 and "in use by another run in this process" in str(caught[0])


def test_another_process_is_refused_with_the_holders_pid_until_it_dies(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        busy = pytest.raises(RunFolderBusyError, match=rf"in use by another run \(pid {holder.pid} on .*\); wait")
        with busy as caught, claim_run_dir(tmp_path):
            pass
        assert "\n" not in str(caught.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL leaves no stale lock: the folder can be claimed at once
    deadline = time.monotonic() + 10
    while True:
        try:
            with claim_run_dir(tmp_path):
                break
        except RunFolderBusyError:
            assert time.monotonic() < deadline, "the lock outlived its process"
            time.sleep(0.05)
    assert lock_holder(tmp_path).startswith(f"pid {os.getpid()} ")
