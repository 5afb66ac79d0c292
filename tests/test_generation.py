"""Generation from a run folder: greedy decoding matches a hand-written decoding loop, the tuned model
speaks in the trained style, and the base-vs-tuned comparison is written as markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftlab.builder import load_run
from peftlab.generation import (
    ComparedAnswer,
    GenerationOptions,
    compare_run,
    comparison_markdown,
    encode_prompt,
    generate_text,
    read_messages,
    read_prompts,
)
from peftlab.run_config import RunConfig
from peftlab.tokenization import stop_token_ids
from peftlab.train import train

CHATS = [
    ("Hi", "Aye! Hello, matey."),
    ("Sky?", "Aye! Blue, matey."),
    ("2+2?", "Aye! Four, matey."),
    ("Cat?", "Aye! A cat, matey."),
]
LEARNING_RATE = {"lora": 3e-2, "prompt_tuning": 1e-1, "prefix_tuning": 1e-1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generation")
    data = root / "train.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    folders = {}
    for method, lr in LEARNING_RATE.items():
        cfg = RunConfig()
        cfg.method.name = method
        cfg.method.num_virtual_tokens = 8
        cfg.data.train_file = str(data)
        cfg.data.valid_file = None
        cfg.data.max_length = 64
        cfg.train.batch_size = 4
        cfg.train.max_steps = 80 if method == "lora" else 20
        cfg.train.lr = lr
        cfg.logger.console = False
        cfg.output_dir = str(root / method)
        train(cfg)
        folders[method] = root / method
    return folders


def greedy_reference(model: torch.nn.Module, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Greedy decoding by hand: full forward each step, argmax of the last position."""
    ids = list(prompt_ids)
    stops = set(stop_token_ids(tokenizer))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
            ).logits
            token = int(logits[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
            ids.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("method", list(LEARNING_RATE))
def test_greedy_generation_matches_a_hand_written_decoding_loop(runs: dict[str, Path], method: str) -> None:
    loaded = load_run(runs[method])
    ids = encode_prompt(loaded.tokenizer, prompt="Sky?")
    options = GenerationOptions(max_new_tokens=12)
    assert generate_text(loaded.model, loaded.tokenizer, ids, options) == greedy_reference(
        loaded.model, loaded.tokenizer, ids, 12
    )


def test_tuned_model_answers_in_the_trained_style_and_base_does_not(runs: dict[str, Path]) -> None:
    tuned = load_run(runs["lora"])
    base = load_run(runs["lora"], with_adapter=False)
    ids = encode_prompt(tuned.tokenizer, prompt="Sky?")
    options = GenerationOptions(max_new_tokens=20)
    assert generate_text(tuned.model, tuned.tokenizer, ids, options) == "Aye! Blue, matey."
    assert not generate_text(base.model, base.tokenizer, ids, options).startswith("Aye!")


def test_sampling_is_reproducible_with_a_seed(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["lora"])
    ids = encode_prompt(loaded.tokenizer, prompt="Cat?")
    sampled = [
        generate_text(
            loaded.model,
            loaded.tokenizer,
            ids,
            GenerationOptions(max_new_tokens=16, temperature=2.0, seed=seed),
        )
        for seed in (1, 1, 2, 3)
    ]
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) > 1


def test_compare_writes_a_markdown_table(runs: dict[str, Path], tmp_path: Path) -> None:
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(
        json.dumps({"prompt": "Hi"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Sky?"}]})
        + "\n"
    )
    prompts = read_prompts(prompts_file)
    options = GenerationOptions(max_new_tokens=20)
    rows = compare_run(runs["lora"], prompts, options)
    assert [row.prompt for row in rows] == ["Hi", "Sky?"]
    assert rows[1].tuned == "Aye! Blue, matey." and rows[1].base != rows[1].tuned
    markdown = comparison_markdown(rows, "demo", options)
    assert "| # | prompt | base model | tuned model |" in markdown
    assert "| 2 | Sky? | " in markdown and "Aye! Blue, matey. |" in markdown
    assert "greedy" in markdown


def test_table_cells_escape_pipes_and_newlines() -> None:
    markdown = comparison_markdown([ComparedAnswer("a|b", "line1\nline2", "")], "t", GenerationOptions())
    assert "| 1 | a\\|b | line1<br>line2 | *(empty)* |" in markdown


def test_prompt_and_message_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "wizard", "content": "hi"}]))
    with pytest.raises(ValueError, match="unknown role 'wizard'"):
        read_messages(bad)
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})
    )
    assert [m["role"] for m in read_messages(good)] == ["system", "user"]
    text = tmp_path / "prompts.txt"
    text.write_text("first\n\n second \n")
    assert read_prompts(text) == ["first", "second"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(empty)
    with pytest.raises(ValueError, match="top_p"):
        GenerationOptions(top_p=0.0)
