"""One run at a time per run folder: an exclusive lock held for the whole life of a run.

``claim_run_dir(run_dir)`` takes a non-blocking exclusive ``flock`` on ``run_dir/.peftlab.lock`` and
holds it until the ``with`` block ends. A second run started in the same folder (another process, or
another thread of this one) fails at once with ``RunFolderBusyError`` naming the run that holds it,
instead of interleaving its files with the first run's. The operating system drops the lock when its
process dies, even by SIGKILL, so a crashed run never leaves a stale lock behind: the folder can be
resumed straight away. The lock file itself stays (it records the last holder) and is not a result.

Claims are re-entrant within one thread: the Hydra app claims a job's folder, then ``train`` claims it
again for the same run.

What counts as an earlier run's results, and the refusal to overwrite them, is ``peftlab.train.check_run_folder``.
"""

from __future__ import annotations

import fcntl  # POSIX file locks (Linux, macOS), like the rest of the training stack
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".peftlab.lock"


class RunFolderBusyError(ValueError):
    """Another run holds the run folder's lock; the message names it and what to do."""


@dataclass
class _Claim:
    descriptor: int
    thread: int
    depth: int = 1


_claims: dict[Path, _Claim] = {}
_claims_guard = threading.Lock()


@contextmanager
def claim_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock (creating the folder) for the ``with`` block; yields the folder's absolute path.

    Raises ``RunFolderBusyError`` at once if another run holds it.
    """
    path = Path(run_dir).resolve()
    with _claims_guard:
        claim = _claims.get(path)
        if claim is not None:
            if claim.thread != threading.get_ident():
                raise RunFolderBusyError(
                    f"{path} is in use by another run in this process (pid {os.getpid()}); "
                    "give each concurrent run its own output_dir"
                )
            claim.depth += 1
        else:
            claim = _Claim(_acquire(path), threading.get_ident())
            _claims[path] = claim
    try:
        yield path
    finally:
        with _claims_guard:
            claim.depth -= 1
            if claim.depth == 0:
                del _claims[path]
                os.close(claim.descriptor)  # closing the descriptor releases the lock


def lock_holder(run_dir: str | Path) -> str | None:
    """Who last claimed ``run_dir`` (``pid N on HOST since TIME``), or None if no run ever did."""
    path = Path(run_dir) / LOCK_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def _acquire(path: Path) -> int:
    """Open and lock ``path/LOCK_FILE``; the open descriptor holds the lock."""
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        holder = lock_holder(path) or "a run whose details were not recorded yet"
        raise RunFolderBusyError(
            f"{path} is in use by another run ({holder}); wait for it to finish, or choose another output_dir "
            "(the lock is released when that run's process exits)"
        ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    record = f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, record, 0)
    return descriptor


__all__ = ["LOCK_FILE", "RunFolderBusyError", "claim_run_dir", "lock_holder"]
