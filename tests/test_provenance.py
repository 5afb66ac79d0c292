"""The revision and thread count a result records (peftlab.provenance, hydra_app.system_info)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import peftlab.provenance as provenance
from peftlab.hydra_app import system_info
from peftlab.provenance import revision_text, source_revision


def git(where: Path, *args: str) -> str:
    command = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git repository with one committed file."""
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    git(tmp_path, "add", "tracked.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_a_clean_checkout_gives_its_head_commit(checkout: Path) -> None:
    assert source_revision(checkout) == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": False}


def test_an_edited_tracked_file_marks_the_revision_dirty(checkout: Path) -> None:
    (checkout / "untracked.txt").write_text("notes\n")
    assert source_revision(checkout)["dirty"] is False  # untracked files do not change the code that ran
    (checkout / "tracked.py").write_text("x = 2\n")
    assert source_revision(checkout)["dirty"] is True


def test_no_revision_outside_a_checkout_of_the_package_root(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    inner = checkout / "site-packages"
    inner.mkdir()
    assert source_revision(inner) is None  # a folder inside some other project's repository
    assert source_revision(tmp_path_factory.mktemp("plain")) is None


def test_no_revision_without_git(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", missing)
    assert source_revision(checkout) is None


def test_system_info_records_the_thread_count_and_this_checkout() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert system_info()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert system_info()["source"] == source_revision()


def test_revision_text_names_the_commit_and_whether_it_was_edited(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    commit = git(checkout, "rev-parse", "HEAD")
    assert revision_text(checkout) == commit
    (checkout / "tracked.py").write_text("x = 3\n")
    assert revision_text(checkout) == f"{commit} (dirty)"
    assert revision_text(tmp_path_factory.mktemp("plain")) == "not a git checkout"
