"""Sentence-pair classification (GLUE MNLI, RTE, ...): ``data.text_pair_field`` names the second text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from peftlab.builder import build_for_run, load_run
from peftlab.cli import main
from peftlab.data import ClassificationExample, DataError, collate, load_data, model_inputs
from peftlab.data.check import DataOptions, check_lines
from peftlab.data.encode import encode_classification, fit_to_length
from peftlab.data.jsonl import Line
from peftlab.fresh_head import is_head_key, with_fresh_head
from peftlab.models import build_model
from peftlab.run_config import DataConfig, RunConfig
from peftlab.tokenization import build_byte_tokenizer
from peftlab.train import train

WORDS = ["the", "cat", "sat", "a", "dog", "ran", "yes", "no", "same", "premise", "good", "bad"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {token: index for index, token in enumerate([*SPECIALS, *WORDS])}
PAIRS = [  # the label depends on the second text only, so a model that never sees it cannot fit them
    {"premise": "same premise", "hypothesis": "good", "label": 1},
    {"premise": "same premise", "hypothesis": "bad", "label": 0},
    {"premise": "same premise", "hypothesis": "good good", "label": 1},
    {"premise": "same premise", "hypothesis": "bad bad", "label": 0},
]


def bert_tokenizer(folder: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over ``VOCAB``, built offline, saved in ``folder`` too."""
    tokenizer = BertTokenizerFast(vocab=dict(VOCAB))
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pair_options(**overrides: object) -> DataOptions:
    settings = {"format": "classification", "text_field": "premise", "text_pair_field": "hypothesis"}
    return DataOptions(**{**settings, **overrides})  # type: ignore[arg-type]


def test_a_pair_is_two_segments_with_their_segment_ids(tmp_path: Path) -> None:
    tokenizer = bert_tokenizer(tmp_path / "tok")
    example = encode_classification("the cat sat", 1, tokenizer, "a dog ran")
    expected = ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "ran", "[SEP]"]
    assert example.input_ids == [VOCAB[token] for token in expected]
    assert example.token_type_ids == [0] * 5 + [1] * 4
    assert example.label == 1
    single = encode_classification("the cat sat", 0, tokenizer)
    assert single.token_type_ids is None  # one segment: the model's default (all zeros) is right


def test_a_truncated_pair_keeps_its_segment_ids_aligned(tmp_path: Path) -> None:
    example = encode_classification("the cat sat", 1, bert_tokenizer(tmp_path / "tok"), "a dog ran")
    cut, note = fit_to_length(example, 7, truncate=True)
    assert isinstance(cut, ClassificationExample) and note == "truncated from 9 to 7 tokens"
    assert cut.input_ids == example.input_ids[:7]
    assert cut.token_type_ids == [0] * 5 + [1] * 2


def test_the_byte_tokenizer_marks_where_the_second_text_starts() -> None:
    tokenizer = build_byte_tokenizer()
    example = encode_classification("ab", 0, tokenizer, "cd")
    assert tokenizer.convert_ids_to_tokens(example.input_ids) == ["<|bos|>", "a", "b", "<|eos|>", "c", "d"]


def test_pair_batches_give_the_logits_of_the_tokenizers_own_pair_batch(tmp_path: Path) -> None:
    """Loader + collate, against the tokenizer's batched pair encoding fed straight to the model."""
    tokenizer = bert_tokenizer(tmp_path / "tok")
    rows = [
        {"premise": "the cat sat", "hypothesis": "a dog ran", "label": 0},
        {"premise": "the dog", "hypothesis": "a cat sat the same", "label": 1},
        {"premise": "yes", "hypothesis": "no", "label": 1},
    ]
    write_jsonl(tmp_path / "hub" / "train.jsonl", rows)
    data = DataConfig(
        train_file=None,
        valid_file=None,
        hf_dataset=str(tmp_path / "hub"),
        hf_valid_split=None,
        text_field="premise",
        text_pair_field="hypothesis",
        format="classification",
    )
    loaded = load_data(data, tokenizer, task="sequence_classification", num_labels=2)
    batch = collate(loaded.train.examples, pad_token_id=tokenizer.pad_token_id)
    model = build_model("tiny-bert", task="sequence_classification", seed=0).eval()
    reference = tokenizer(
        [r["premise"] for r in rows], [r["hypothesis"] for r in rows], padding=True, return_tensors="pt"
    )
    assert torch.equal(batch["token_type_ids"], reference["token_type_ids"])
    with torch.no_grad():
        ours = model(**model_inputs(batch)).logits
        expected = model(**reference).logits
        one_segment = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, expected)
    assert not torch.allclose(ours, one_segment, atol=1e-4), "the segment ids must reach the model"


def pair_run(tmp_path: Path, method: str, rows: list[dict], name: str = "run", num_labels: int = 2) -> RunConfig:
    """A tiny-BERT classifier run on ``rows`` (premise / hypothesis pairs) with a WordPiece tokenizer."""
    bert_tokenizer(tmp_path / "tok")
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    cfg = RunConfig()
    cfg.model.preset = "tiny-bert"
    cfg.model.task = "sequence_classification"
    cfg.model.num_labels = num_labels
    cfg.model.tokenizer = str(tmp_path / "tok")
    cfg.method.name = method
    cfg.method.num_virtual_tokens = 4
    cfg.method.kernel = "torch"  # the Triton LoRA kernels are tested on their own; interpreted they are slow
    cfg.data.train_file = cfg.data.valid_file = str(path)
    cfg.data.text_field, cfg.data.text_pair_field = "premise", "hypothesis"
    cfg.train.batch_size, cfg.train.max_steps = 4, 100
    cfg.train.lr = {"lora": 3e-2, "prompt_tuning": 1e-1, "prefix_tuning": 1e-1, "full": 3e-3}[method]
    cfg.logger.console = False
    cfg.output_dir = str(tmp_path / name)
    return cfg


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "full"])
def test_each_method_fits_pairs_whose_label_is_in_the_second_text(tmp_path: Path, method: str) -> None:
    summary = train(pair_run(tmp_path, method, PAIRS))
    assert summary["valid_accuracy"] == 1.0
    assert summary["final_train_loss"] < 0.5 * summary["first_train_loss"]


def test_a_missing_second_text_is_an_error_naming_its_line_and_field(tmp_path: Path) -> None:
    lines = [Line(1, PAIRS[0]), Line(2, {"premise": "same premise", "label": 0}), Line(3, {**PAIRS[1], "hypothesis": 7})]
    report = check_lines(lines, "pairs.jsonl", build_byte_tokenizer(), pair_options())
    assert [str(problem) for problem in report.errors] == [
        "pairs.jsonl:2: field 'hypothesis' is missing",
        "pairs.jsonl:3: field 'hypothesis' must be a string, got number",
    ]
    assert len(report.examples) == 1


def test_training_refuses_pairs_with_a_bad_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [*PAIRS, {"premise": "same premise", "hypothesis": "", "label": 1}])
    data = DataConfig(train_file=str(path), valid_file=None, text_field="premise", text_pair_field="hypothesis")
    with pytest.raises(DataError, match=r"pairs\.jsonl:5: field 'hypothesis' is empty"):
        load_data(data, build_byte_tokenizer(), task="sequence_classification")


def test_a_tokenizer_that_glues_the_two_texts_together_is_refused() -> None:
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    no_pair_template = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    with pytest.raises(ValueError, match=r"data\.text_pair_field: .* no token between them"):
        check_lines([Line(1, PAIRS[0])], "pairs.jsonl", no_pair_template, pair_options())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": "completion"}, r"data\.text_pair_field names a second text of classification examples"),
        ({"text_pair_field": "premise"}, r"text_pair_field and data\.text_field are both 'premise'"),
    ],
)
def test_a_pair_field_that_cannot_apply_is_a_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_options(**overrides)


def test_data_check_reads_pairs_from_the_command_line(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [*PAIRS, {"premise": "same premise", "label": 0}])
    arguments = ["data", "check", str(path), "--text-field", "premise", "--text-pair-field", "hypothesis"]
    assert main(arguments) == 1
    output = capsys.readouterr().out
    assert f"{path}:5: field 'hypothesis' is missing" in output
    assert "4 usable examples (classification)" in output


def test_continuing_a_run_with_another_number_of_labels_is_a_clear_error(tmp_path: Path) -> None:
    three_way = [dict(row, label=index % 3) for index, row in enumerate(PAIRS)]
    first = pair_run(tmp_path, "lora", three_way, name="mnli", num_labels=3)
    first.train.max_steps = 2
    train(first)
    second = pair_run(tmp_path, "lora", PAIRS, name="rte")
    second.train.init_from = str(tmp_path / "mnli")
    with pytest.raises(ValueError, match=r"that run's classifier has 3 labels and model\.num_labels is 2"):
        train(second)
    second.model.num_labels = 3
    second.train.max_steps = 2
    assert train(second)["steps"] == 2


def head_and_body(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A wrapped model's trainable tensors, as its adapter saves them, split into head and the rest."""
    state = {key: value.clone() for key, value in model.method.adapter_state_dict(model.base_model).items()}
    head = {key: value for key, value in state.items() if is_head_key(key)}
    return head, {key: value for key, value in state.items() if key not in head}


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix_tuning", "full"])
@pytest.mark.parametrize("source", ["run", "checkpoint"])
def test_continuing_with_a_new_head_keeps_the_trained_body_and_draws_a_head_of_the_new_size(
    tmp_path: Path, method: str, source: str
) -> None:
    three_way = [dict(row, label=index % 3) for index, row in enumerate(PAIRS)]
    first = pair_run(tmp_path, method, three_way, name="mnli", num_labels=3)
    first.train.max_steps = 3
    train(first)
    saved_head, saved_body = head_and_body(load_run(tmp_path / "mnli").model)
    assert saved_head and all(tensor.shape[0] == 3 for key, tensor in saved_head.items() if key.endswith("weight"))

    second = pair_run(tmp_path, method, PAIRS, name="rte")
    checkpoints = sorted((tmp_path / "mnli" / "checkpoints").iterdir())
    second.train.init_from = str(tmp_path / "mnli" if source == "run" else checkpoints[-1])
    second.train.init_head = "new"
    start, _ = build_for_run(second)
    head, body = head_and_body(start)
    assert body.keys() == saved_body.keys()
    for key, tensor in saved_body.items():
        torch.testing.assert_close(body[key], tensor, rtol=0, atol=0, msg=key)
    assert head.keys() == saved_head.keys()
    assert all(tensor.shape[0] == 2 for key, tensor in head.items() if key.endswith("weight"))

    second.train.max_steps = 2
    assert train(second)["steps"] == 2
    continued_head, _ = head_and_body(load_run(tmp_path / "rte").model)
    assert all(tensor.shape[0] == 2 for key, tensor in continued_head.items() if key.endswith("weight"))


def test_a_new_head_of_the_same_size_replaces_the_trained_one(tmp_path: Path) -> None:
    first = pair_run(tmp_path, "lora", PAIRS, name="sst")
    first.train.max_steps = 3
    train(first)
    saved_head, saved_body = head_and_body(load_run(tmp_path / "sst").model)
    second = pair_run(tmp_path, "lora", PAIRS, name="rte")
    second.train.init_from = str(tmp_path / "sst")
    kept, _ = build_for_run(second)
    second.train.init_head = "new"
    fresh, _ = build_for_run(second)
    kept_head, _ = head_and_body(kept)
    fresh_head, fresh_body = head_and_body(fresh)
    for key, tensor in saved_head.items():
        torch.testing.assert_close(kept_head[key], tensor, rtol=0, atol=0)
        assert not torch.equal(fresh_head[key], tensor), f"{key}: the trained head was loaded"
    for key, tensor in saved_body.items():
        torch.testing.assert_close(fresh_body[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"init_head": "fresh"}, r"train\.init_head is 'fresh'; choose one of keep, new"),
        ({"init_head": "new"}, r"train\.init_head=new needs train\.init_from"),
        ({"init_head": "new", "init_from": "elsewhere", "task": "causal_lm"}, r"applies to model\.task=sequence_classification"),
    ],
)
def test_a_new_head_that_cannot_apply_is_refused_before_loading(tmp_path: Path, settings: dict, message: str) -> None:
    cfg = pair_run(tmp_path, "lora", PAIRS)
    cfg.train.init_head = settings["init_head"]
    cfg.train.init_from = settings.get("init_from")
    cfg.model.task = settings.get("task", cfg.model.task)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    written = {path.name for path in (tmp_path / "run").glob("*")} if (tmp_path / "run").exists() else set()
    assert written <= {".peftlab.lock"}, written  # refused before the tokenizer or model was saved


def test_a_new_head_needs_a_head_in_the_saved_tensors() -> None:
    saved = {"base_model.model.encoder.layer.0.query.lora_A.weight": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match=r"adapter\.safetensors: train\.init_head=new, but the saved tensors hold no"):
        with_fresh_head(saved, saved, "adapter.safetensors")
    head = {"base_model.model.classifier.modules_to_save.weight": torch.ones(2, 4)}
    fresh = with_fresh_head({**saved, "base_model.model.classifier.modules_to_save.weight": torch.zeros(3, 4)}, head, "x")
    assert fresh["base_model.model.classifier.modules_to_save.weight"].shape == (2, 4)
    assert not is_head_key("base_model.model.bert.pooler.dense.weight") and not is_head_key("classifier")
