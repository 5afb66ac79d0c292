"""Write the paper-reproduction data (BoolQ, E2E NLG) as prompt/completion JSONL. Needs hub access once.

    python benchmarks/accuracy/export_paper_data.py boolq e2e_nlg [--out data/paper] [--overwrite]

- ``boolq`` (``google/boolq``): ``{"prompt": "<passage>\\nQuestion: <question>?\\nAnswer:", "completion": " yes"|" no"}``
- ``e2e_nlg`` (``tuetschek/e2e_nlg``): ``{"prompt": "<meaning representation> ||", "completion": " <reference>"}``

Each gets ``<out>/<name>/train.jsonl`` and ``valid.jsonl`` (the hub's validation split), the files that
``configs/data/boolq.yaml`` and ``configs/data/e2e_nlg.yaml`` name. Existing files are kept unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("data/paper")
SPLITS = {"train": "train", "valid": "validation"}


def boolq_record(row: dict[str, Any]) -> dict[str, str]:
    """One BoolQ row as a prompt/completion record."""
    question = row["question"].strip().rstrip("?")
    return {
        "prompt": f"{row['passage'].strip()}\nQuestion: {question}?\nAnswer:",
        "completion": " yes" if row["answer"] else " no",
    }


def e2e_record(row: dict[str, Any]) -> dict[str, str]:
    """One E2E NLG row as a prompt/completion record (the prefix-tuning paper's ``table || text`` layout)."""
    return {
        "prompt": f"{row['meaning_representation'].strip()} ||",
        "completion": " " + row["human_reference"].strip(),
    }


SOURCES: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, str]]]] = {
    "boolq": ("google/boolq", boolq_record),
    "e2e_nlg": ("tuetschek/e2e_nlg", e2e_record),
}


def write_jsonl(path: Path, records: Iterable[dict[str, str]], overwrite: bool) -> None:
    """Write records one per line; refuse to replace an existing file unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def export(name: str, out: Path, overwrite: bool = False) -> list[Path]:
    """Download dataset ``name`` from the hub and write its train/valid JSONL under ``out/name``."""
    import datasets

    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    hub_name, to_record = SOURCES[name]
    written = []
    for split, hub_split in SPLITS.items():
        rows = datasets.load_dataset(hub_name, split=hub_split)
        path = out / name / f"{split}.jsonl"
        write_jsonl(path, (to_record(dict(row)) for row in rows), overwrite)
        written.append(path)
    return written


def main() -> None:
    """Parse the command line and export the named datasets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", choices=sorted(SOURCES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    for name in args.names:
        for path in export(name, args.out, args.overwrite):
            print(path)


if __name__ == "__main__":
    main()
