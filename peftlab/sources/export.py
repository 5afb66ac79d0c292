"""Write a task as JSONL files the training engine reads: ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``
and ``labels.json`` (label names, split sizes, prompt format, source and licence).

An empty split (Pang & Lee's anchor split has no validation set) gets no file, and ``labels.json`` lists the
files written. Existing files are never replaced unless ``overwrite=True``; each file is written to a
temporary name first and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftlab.atomic import write_text_atomic
from peftlab.sources.assets import AssetError
from peftlab.sources.registry import load_task
from peftlab.sources.task import SPLITS, Task, chat_record, classification_record, completion_record

CLASSIFICATION = "classification"
COMPLETION = "completion"
CHAT = "chat"
FORMATS = (CLASSIFICATION, COMPLETION, CHAT)
LABELS_FILE = "labels.json"


def task_records(task: Task, split: str, fmt: str) -> list[dict[str, Any]]:
    """The examples of one split as classification, completion or chat records."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown record format {fmt!r}; choose one of {', '.join(FORMATS)}")
    examples = task.split(split)
    if fmt == CLASSIFICATION:
        if not task.label_names:
            raise AssetError(
                f"task {task.name!r} has no fixed label set (its answer choices vary by example or are free-form); "
                "export it as 'completion' or 'chat' for a decoder"
            )
        return [classification_record(example) for example in examples]
    if fmt == COMPLETION:
        return [completion_record(task.prompt, example) for example in examples]
    return [chat_record(task.prompt, example) for example in examples]


def export_task(
    task: str | Task,
    out_dir: str | Path,
    fmt: str = CLASSIFICATION,
    overwrite: bool = False,
    **load_options: Any,
) -> dict[str, Path]:
    """Write ``task`` (a name for ``load_task``, or a loaded ``Task``) as JSONL into ``out_dir``.

    Returns the written paths keyed ``train``/``valid``/``test``/``labels`` (a split with no examples
    is left out).
    """
    if isinstance(task, str):
        task = load_task(task, **load_options)
    elif load_options:
        raise ValueError(f"load options {sorted(load_options)} only apply when the task is given by name")
    records = {split: task_records(task, split, fmt) for split in SPLITS}
    out_dir = Path(out_dir)
    targets = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    existing = [path for path in (*targets.values(), out_dir / LABELS_FILE) if path.exists()]
    if existing and not overwrite:
        raise AssetError(
            f"{out_dir}: would replace {', '.join(path.name for path in existing)}; "
            "choose another folder, or allow replacing them (overwrite=True, or --overwrite on the command line)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split in SPLITS:
        if records[split]:
            write_text_atomic(
                targets[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[split])
            )
            written[split] = targets[split]
        else:
            targets[split].unlink(
                missing_ok=True
            )  # only reached with overwrite=True: drop a stale split file
    summary = {
        **task.summary(),
        "format": fmt,
        "files": {split: path.name for split, path in written.items()},
    }
    written["labels"] = out_dir / LABELS_FILE
    write_text_atomic(written["labels"], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return written


