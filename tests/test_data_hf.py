"""`datasets` sources (name / config / split), read offline from a local folder of data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.data import ClassificationExample, DataError, TokenExample, load_data
from peftlab.run_config import DataConfig
from peftlab.tokenization import build_byte_tokenizer

TOKENIZER = build_byte_tokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_classification_splits_load_through_datasets(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": f"text {i}", "label": i % 2} for i in range(6)])
    write_jsonl(tmp_path / "validation.jsonl", [{"sentence": "held out", "label": 1}])
    data = DataConfig(train_file=None, valid_file=None, hf_dataset=str(tmp_path), text_field="sentence")
    loaded = load_data(data, TOKENIZER, task="sequence_classification", num_labels=2)
    assert [e.label for e in loaded.train.examples] == [0, 1, 0, 1, 0, 1]
    assert all(isinstance(e, ClassificationExample) for e in loaded.train.examples)
    assert loaded.valid is not None and len(loaded.valid.examples) == 1
    assert loaded.train.source == f"{tmp_path}[train]"


def test_chat_rows_from_datasets_are_masked_like_jsonl(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Aye!"}]}] * 3
    write_jsonl(tmp_path / "train.jsonl", rows)
    data = DataConfig(train_file=None, valid_file=None, hf_dataset=str(tmp_path), hf_valid_split=None)
    loaded = load_data(data, TOKENIZER)
    example = loaded.train.examples[0]
    assert isinstance(example, TokenExample) and loaded.valid is None
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    assert TOKENIZER.decode(trained) == "Aye!<|end|>\n"


def test_bad_rows_are_reported_by_split_and_row(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": "fine", "label": 0}, {"text": "", "label": 1}, {"text": "x", "label": 5}],
    )
    data = DataConfig(train_file=None, valid_file=None, hf_dataset=str(tmp_path), hf_valid_split=None)
    with pytest.raises(DataError) as caught:
        load_data(data, TOKENIZER, task="sequence_classification", num_labels=2)
    message = str(caught.value)
    assert f"{tmp_path}[train]:2: field 'text' is empty" in message
    assert f"{tmp_path}[train]:3: field 'label' is 5, outside 0..1" in message


def test_a_missing_split_or_dataset_is_a_clear_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "fine", "label": 0}])
    data = DataConfig(train_file=None, valid_file=None, hf_dataset=str(tmp_path), hf_valid_split="test")
    with pytest.raises(ValueError, match=r"split 'test'"):
        load_data(data, TOKENIZER, task="sequence_classification")
    with pytest.raises(ValueError, match="no training data"):
        load_data(DataConfig(train_file=None, valid_file=None), TOKENIZER)
    with pytest.raises(ValueError, match=r"needs model\.task=sequence_classification"):
        load_data(DataConfig(format="classification"), TOKENIZER)
