"""Where examples come from: JSONL files, or a Hugging Face ``datasets`` source by name / config / split.

Both paths go through the same checks (``peftlab.data.check``); a source with errors raises ``DataError``
listing every bad example, so a run never starts on data it would silently skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from peftlab.data.check import AUTO, CheckReport, DataOptions, check_file, check_lines
from peftlab.data.jsonl import Line
from peftlab.data.problems import DataError
from peftlab.data.records import CLASSIFICATION

CLASSIFICATION_TASK = "sequence_classification"


@dataclass
class LoadedData:
    """Checked, tokenised training examples and (optionally) validation examples."""

    train: CheckReport
    valid: CheckReport | None


def data_options(data: Any, task: str = "causal_lm", num_labels: int = 2) -> DataOptions:
    """``DataOptions`` from a run config's ``data`` section (classifiers read classification data)."""
    fmt = data.format
    if task == CLASSIFICATION_TASK and fmt == AUTO:
        fmt = CLASSIFICATION
    if task == CLASSIFICATION_TASK and fmt != CLASSIFICATION:
        raise ValueError(f"model.task={task} needs data.format=classification (got {fmt!r})")
    if task != CLASSIFICATION_TASK and fmt == CLASSIFICATION:
        raise ValueError("data.format=classification needs model.task=sequence_classification")
    return DataOptions(
        format=fmt,
        max_length=data.max_length,
        truncation=bool(getattr(data, "truncation", False)),
        truncation_side=str(getattr(data, "truncation_side", "right")),
        text_field=data.text_field,
        label_field=data.label_field,
        num_labels=num_labels,
        text_pair_field=data.text_pair_field,
    )


def load_data(
    data: Any, tokenizer: PreTrainedTokenizerBase, task: str = "causal_lm", num_labels: int = 2
) -> LoadedData:
    """Load, check and tokenise the train (and validation) data a run config's ``data`` section names.

    ``data.train_file``/``data.valid_file`` (JSONL) take precedence over ``data.hf_dataset``. Raises
    ``DataError`` listing every error in every source.
    """
    from peftlab.run_config import resolve_path

    options = data_options(data, task, num_labels)
    if data.train_file:
        train = check_file(resolve_path(data.train_file), tokenizer, options)
        valid = check_file(resolve_path(data.valid_file), tokenizer, options) if data.valid_file else None
    elif data.hf_dataset:
        train = check_hf_split(data.hf_dataset, data.hf_config, data.hf_train_split, tokenizer, options)
        valid = None
        if data.hf_valid_split:
            valid = check_hf_split(data.hf_dataset, data.hf_config, data.hf_valid_split, tokenizer, options)
    else:
        raise ValueError(
            "no training data: set data.train_file (JSONL) or data.hf_dataset (a `datasets` name)"
        )
    reports = [r for r in (train, valid) if r is not None]
    problems = [p for r in reports for p in r.errors]
    if problems:
        names = ", ".join(r.source for r in reports if r.errors)
        raise DataError(
            problems, f"{len(problems)} error(s) in {names}; training needs every example usable:"
        )
    for report in reports:
        if not report.examples:
            raise DataError([], f"{report.source}: no usable examples")
    return LoadedData(train, valid)


def check_hf_split(
    name: str, config: str | None, split: str, tokenizer: PreTrainedTokenizerBase, options: DataOptions
) -> CheckReport:
    """Load one split of a ``datasets`` source and check it like a JSONL file (rows numbered from 1)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except (
        Exception
    ) as error:  # datasets raises many types (not found, offline, bad split); add what was asked for
        raise ValueError(
            f"cannot load dataset {name!r} (config {config!r}, split {split!r}): {error}"
        ) from error
    lines = [Line(number, dict(row)) for number, row in enumerate(dataset, start=1)]
    return check_lines(lines, f"{name}[{split}]", tokenizer, options)
