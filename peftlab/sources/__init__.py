"""Real pretrained models and real labelled data, offline, from registry packages.

Data: ``load_task(name)`` -> ``Task`` (train/valid/test examples with label names and a prompt format) and
``export_task(name, out_dir, fmt)`` -> ``train.jsonl``/``valid.jsonl``/``test.jsonl`` + ``labels.json``.
Names: ``pang_lee``, ``pang_lee_reviews``, ``vader_movies``, ``bbc_news`` and ``bigbench/<task>``.

Models: ``load_gguf_model``, ``cache_gguf_as_safetensors`` and ``installed_package_model_dir``.
Fetch the packages with ``python -m peftlab.sources fetch`` (see ``assets.ASSETS`` for sizes and licences).
"""

from peftlab.sources.assets import ASSETS, AssetError, asset_dir, cache_root
from peftlab.sources.export import FORMATS, export_task, task_records
from peftlab.sources.models import (
    cache_gguf_as_safetensors,
    installed_package_model_dir,
    load_gguf_model,
    load_gguf_tokenizer,
    resolve_gguf_file,
)
from peftlab.sources.registry import load_task, task_names
from peftlab.sources.splits import SplitSizes, split_examples
from peftlab.sources.task import Example, PromptFormat, Task

__all__ = [
    "ASSETS",
    "FORMATS",
    "AssetError",
    "Example",
    "PromptFormat",
    "SplitSizes",
    "Task",
    "asset_dir",
    "cache_gguf_as_safetensors",
    "cache_root",
    "export_task",
    "installed_package_model_dir",
    "load_gguf_model",
    "load_gguf_tokenizer",
    "load_task",
    "resolve_gguf_file",
    "split_examples",
    "task_names",
    "task_records",
]
