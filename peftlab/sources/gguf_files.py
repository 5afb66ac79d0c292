"""Check a GGUF file before ``transformers`` loads it: readable, an architecture it converts, tensor types
that ``gguf`` can dequantise. Each problem becomes an ``AssetError`` that says what to do.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from peftlab.sources.assets import AssetError

GGUF_REQUIREMENTS = ("gguf", "accelerate")
# llama.cpp names that transformers renames before looking the architecture up.
ARCHITECTURE_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
}


@dataclass(frozen=True)
class GgufSummary:
    """What a GGUF file holds: its architecture, model name and how many tensors of each type."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int]
    has_tokenizer: bool


def require_gguf_packages() -> None:
    """Raise a clear error when a package GGUF loading needs is not installed."""
    missing = [name for name in GGUF_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise AssetError(f"loading GGUF files needs {', '.join(missing)}: pip install {' '.join(missing)}")


def _string_field(reader: object, key: str) -> str:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        return ""
    value = field.contents()
    return value if isinstance(value, str) else str(value)


def inspect_gguf(path: str | Path) -> GgufSummary:
    """Read the header of a GGUF file (no tensor data is loaded)."""
    require_gguf_packages()
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as error:
        raise AssetError(f"{path}: not a readable GGUF file ({error})") from None
    architecture = _string_field(reader, "general.architecture")
    if not architecture:
        raise AssetError(f"{path}: the GGUF header has no 'general.architecture' field")
    return GgufSummary(
        path=path,
        architecture=architecture,
        name=_string_field(reader, "general.name"),
        tensor_types=dict(Counter(tensor.tensor_type.name for tensor in reader.tensors)),
        has_tokenizer="tokenizer.ggml.tokens" in reader.fields,
    )


def supported_architectures() -> list[str]:
    """The GGUF architectures this ``transformers`` converts (empty when it does not say)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return []
    return [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]


def undequantisable_types(path: str | Path) -> list[str]:
    """The tensor types in ``path`` that ``gguf.dequantize`` cannot turn into floats (tried on one row each)."""
    require_gguf_packages()
    import gguf

    reader = gguf.GGUFReader(Path(path))
    first_of_type = {}
    for tensor in reader.tensors:
        first_of_type.setdefault(tensor.tensor_type, tensor)
    failing = []
    for tensor_type, tensor in first_of_type.items():
        try:
            gguf.dequantize(tensor.data[:1], tensor_type)
        except (NotImplementedError, KeyError, ValueError):
            failing.append(tensor_type.name)
    return sorted(failing)


def check_gguf_loadable(path: str | Path) -> GgufSummary:
    """The file's summary, or an error naming the unsupported architecture or tensor types."""
    summary = inspect_gguf(path)
    known = supported_architectures()
    architecture = ARCHITECTURE_ALIASES.get(summary.architecture, summary.architecture)
    if known and architecture not in known:
        raise AssetError(
            f"{summary.path}: GGUF architecture {summary.architecture!r} cannot be converted by transformers; "
            f"supported: {', '.join(known)}"
        )
    failing = undequantisable_types(path)
    if failing:
        counts = ", ".join(f"{name} ({summary.tensor_types.get(name, 0)} tensors)" for name in failing)
        raise AssetError(
            f"{summary.path}: gguf cannot dequantise tensor type(s) {counts}; use a file quantised as "
            "F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 or a K-quant, or upgrade gguf (pip install -U gguf)"
        )
    return summary
