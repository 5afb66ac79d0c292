"""Run from the repository root, the ``kernels/`` folder must not shadow the PyPI package ``kernels``.

``transformers`` 5.25 and newer imports that package whenever it loads a model class; Python started in
the repository root (``python -m``, ``python -c``, a notebook) sees this project's folder under the same
top-level name first.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def loaded_kernels_modules() -> dict[str, object]:
    """The modules now loaded as ``kernels`` or ``kernels.*``."""
    return {name: module for name, module in sys.modules.items()
            if name == "kernels" or name.startswith("kernels.")}


@pytest.fixture
def fresh_kernels_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget every module called ``kernels`` or ``kernels.*`` for one test, and restore them after."""
    saved = loaded_kernels_modules()
    for name in saved:
        del sys.modules[name]
    monkeypatch.setattr(sys, "path_importer_cache", {})
    yield
    for name in loaded_kernels_modules():
        del sys.modules[name]
    sys.modules.update(saved)


def write_stand_in(folder: Path) -> None:
    """An installed top-level ``kernels`` package that says who it is."""
    (folder / "kernels").mkdir()
    (folder / "kernels" / "__init__.py").write_text('WHO = "the installed package"\n')


def test_the_installed_package_is_imported_in_place_of_the_repository_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_kernels_name: None) -> None:
    write_stand_in(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT), str(tmp_path)])
    imported = importlib.import_module("kernels")
    assert imported.WHO == "the installed package"
    assert Path(imported.__file__).parent == tmp_path / "kernels"
    assert sys.modules["kernels"] is imported


def test_the_repository_root_is_skipped_when_sys_path_names_it_as_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_kernels_name: None) -> None:
    write_stand_in(tmp_path)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path)])
    assert importlib.import_module("kernels").WHO == "the installed package"


@pytest.mark.parametrize("elsewhere", ["nothing", "a bare folder"])
def test_without_an_installed_package_the_folder_loads_itself(
        elsewhere: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_kernels_name: None) -> None:
    if elsewhere == "a bare folder":
        (tmp_path / "kernels").mkdir()  # a namespace portion, not a package: never taken in place of ours
    monkeypatch.setattr(sys, "path", [str(ROOT), str(tmp_path)])
    imported = importlib.import_module("kernels")
    assert Path(imported.__file__) == ROOT / "kernels" / "__init__.py"
    assert callable(imported.lora_linear) and not hasattr(imported, "WHO")


def test_transformers_model_code_and_peftlab_import_from_the_repository_root() -> None:
    code = ("import transformers.modeling_utils, peftlab, peftlab.kernels; "
            "from transformers import BertForSequenceClassification; "
            "print(callable(peftlab.kernels.lora_linear))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
