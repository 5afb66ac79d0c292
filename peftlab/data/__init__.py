"""Training data: JSONL (chat, prompt/completion, classification) and ``datasets`` sources -> checked,
tokenised, loss-masked examples -> padded or packed batches.

- ``jsonl``: read JSONL files without ever raising on their contents;
- ``records``: the example formats and their field checks;
- ``encode``: tokenisation with loss masks and the ``max_length`` rule;
- ``check``: validate a whole source (``peftlab data check``), every problem as ``FILE:LINE: problem``;
- ``sources``: the run config's data section -> checked train/valid examples;
- ``collate``: dynamic padding and sequence packing;
- ``loader``: seeded, resumable batch order.
"""

from peftlab.data.check import CheckReport, DataOptions, check_file, check_lines
from peftlab.data.collate import Batch, collate, collate_packed, count_tokens, model_inputs, pack
from peftlab.data.encode import (
    IGNORE_INDEX,
    ClassificationExample,
    EncodingError,
    TokenExample,
    encode_chat,
    encode_classification,
    encode_completion,
)
from peftlab.data.loader import BatchLoader
from peftlab.data.problems import DataError, Problem
from peftlab.data.sources import LoadedData, data_options, load_data

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "BatchLoader",
    "CheckReport",
    "ClassificationExample",
    "DataError",
    "DataOptions",
    "EncodingError",
    "LoadedData",
    "Problem",
    "TokenExample",
    "check_file",
    "check_lines",
    "collate",
    "collate_packed",
    "count_tokens",
    "data_options",
    "encode_chat",
    "encode_classification",
    "encode_completion",
    "load_data",
    "model_inputs",
    "pack",
]
