"""Which code a result came from: the git revision of the peftlab checkout that ran it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _git(args: list[str], where: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_revision(root: Path = PACKAGE_ROOT) -> dict[str, Any] | None:
    """``{"commit": SHA, "dirty": bool}`` when peftlab runs from a git checkout rooted at ``root``, else None.

    ``dirty`` is True when tracked files differ from the commit, so a result made with uncommitted
    changes says so. An installed wheel (no checkout, or a checkout of some other project) gives None.
    """
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is None or Path(top).resolve() != root.resolve():
        return None
    commit = _git(["rev-parse", "HEAD"], root)
    changes = _git(["status", "--porcelain", "--untracked-files=no"], root)
    if commit is None or changes is None:
        return None
    return {"commit": commit, "dirty": bool(changes)}


def revision_text(root: Path = PACKAGE_ROOT) -> str:
    """``source_revision`` as one line for a results header: ``SHA``, ``SHA (dirty)`` or ``not a git checkout``."""
    revision = source_revision(root)
    if revision is None:
        return "not a git checkout"
    return revision["commit"] + (" (dirty)" if revision["dirty"] else "")
