"""Export: the merged `transformers` checkpoint gives the adapter model's logits, with no peftlab layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftlab.builder import load_run
from peftlab.export import export_merged
from peftlab.run_config import RunConfig
from peftlab.train import train

CHATS = [("Hi", "Aye! Hello, matey."), ("Sky?", "Aye! Blue, matey."), ("2+2?", "Aye! Four.")]


def trained_run(tmp_path: Path, method: str, preset: str = "tiny-llama") -> Path:
    data = tmp_path / "train.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    cfg = RunConfig()
    cfg.model.preset = preset
    cfg.method.name = method
    cfg.method.target_modules = "all-linear" if method == "lora" else None
    cfg.method.num_virtual_tokens = 4
    cfg.data.train_file = str(data)
    cfg.data.valid_file = None
    cfg.data.max_length = 64
    cfg.train.max_steps = 5
    cfg.train.lr = 1e-2 if method != "full" else 1e-3
    cfg.logger.console = False
    cfg.output_dir = str(tmp_path / f"{preset}-{method}")
    train(cfg)
    return Path(cfg.output_dir)


def random_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 263, (3, 17), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize(
    ("preset", "method"), [("tiny-llama", "lora"), ("tiny-gpt2", "lora"), ("tiny-llama", "full")]
)
def test_exported_checkpoint_gives_the_adapter_models_logits(
    tmp_path: Path, preset: str, method: str
) -> None:
    run_dir = trained_run(tmp_path, method, preset)
    out = export_merged(run_dir, tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name or "base_layer" in name for name in exported.state_dict())
    tuned = load_run(run_dir).model
    base = load_run(run_dir, with_adapter=False).model
    batch = random_batch()
    with torch.no_grad():
        expected = tuned(**batch).logits
        got = exported(**batch).logits
        untuned = base(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (untuned - expected).abs().max() > 1e-3  # the adapter changed something, so the check has teeth
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("Aye!", add_special_tokens=False)["input_ids"]) == "Aye!"
    assert tokenizer.chat_template


def test_export_refuses_to_overwrite_a_non_empty_folder(tmp_path: Path) -> None:
    run_dir = trained_run(tmp_path, "lora")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(run_dir, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_prompt_tuning_cannot_be_merged_and_says_why(tmp_path: Path) -> None:
    run_dir = trained_run(tmp_path, "prompt_tuning")
    with pytest.raises(ValueError, match="cannot be merged"):
        export_merged(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
