"""The built wheel carries what a non-editable install needs: the kernels, the configs, the example data."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy, so the build leaves nothing in the checkout
    for name in ("peftlab", "kernels", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(source)],
        check=True,
        cwd=out,
    )
    (wheel,) = out.glob("peftlab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_every_config_under_the_package(wheel_names: set[str]) -> None:
    configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs, "no configs found"
    missing = [name for name in configs if f"peftlab/configs/{name}" not in wheel_names]
    assert not missing, f"configs missing from the wheel: {missing}"


def test_wheel_holds_the_kernels_and_the_embedded_example_data(wheel_names: set[str]) -> None:
    kernels = sorted(p.name for p in (ROOT / "kernels").glob("*.py"))
    assert all(f"peftlab/kernels/{name}" in wheel_names for name in kernels)
    examples = sorted(p.name for p in (ROOT / "peftlab" / "data" / "examples").glob("*.jsonl"))
    assert examples and all(f"peftlab/data/examples/{name}" in wheel_names for name in examples)
