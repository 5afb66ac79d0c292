"""Use a tuned model: generate from a prompt or chat messages, and compare base vs tuned answers.

Prompts go through the tokenizer's chat template (the run folder's tokenizer; the plain template for
presets) unless ``use_chat_template`` is off, in which case the text is continued as is. Generation is
greedy by default (``temperature=0``), so comparisons are reproducible; ``temperature > 0`` samples
(with ``top_p`` / ``top_k`` and a seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from peftlab.builder import load_run
from peftlab.data.jsonl import read_jsonl
from peftlab.data.records import ROLES, example_problems
from peftlab.tokenization import stop_token_ids


@dataclass
class GenerationOptions:
    """How to generate: length, sampling, chat formatting."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    seed: int = 0
    use_chat_template: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {self.max_new_tokens}; it must be at least 1")
        if self.temperature < 0:
            raise ValueError(
                f"temperature is {self.temperature}; use 0 for greedy decoding or a positive value"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p is {self.top_p}; it must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k is {self.top_k}; use 0 to turn top-k off")


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    use_chat_template: bool = True,
) -> list[int]:
    """Token ids of a prompt (as one user turn) or of chat messages, ending with the generation prompt."""
    if (prompt is None) == (messages is None):
        raise ValueError("give either a prompt or chat messages")
    if messages is None:
        if not use_chat_template:
            return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        messages = [{"role": "user", "content": prompt}]
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def generate_text(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: list[int],
    options: GenerationOptions | None = None,
) -> str:
    """The model's answer to ``input_ids`` (new tokens only, special tokens removed)."""
    options = options or GenerationOptions()
    device = next(model.parameters()).device
    inputs = torch.tensor([input_ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "eos_token_id": stop_token_ids(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": options.temperature > 0,
    }
    if options.temperature > 0:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
        torch.manual_seed(options.seed)
    output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **kwargs)
    return tokenizer.decode(_new_tokens(output[0].tolist(), input_ids), skip_special_tokens=True).strip()


def _new_tokens(output: list[int], prompt: list[int]) -> list[int]:
    """The generated part of ``output``: everything after the prompt when the output repeats it."""
    if output[: len(prompt)] == prompt:
        return output[len(prompt) :]
    return output


def read_messages(path: str | Path) -> list[dict[str, Any]]:
    """Chat messages from a JSON file: ``[{"role", "content"}, ...]`` or ``{"messages": [...]}``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read chat messages ({error})") from None
    messages = value.get("messages") if isinstance(value, dict) else value
    if not isinstance(messages, list):
        raise ValueError(f'{path}: expected a list of {{role, content}} messages or {{"messages": [...]}}')
    # the same checks as training data, without requiring an assistant turn
    problems = [p for p in example_problems({"messages": messages}, "chat") if "assistant turn" not in p]
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems) + f" (roles: {', '.join(ROLES)})")
    return messages


def read_prompts(path: str | Path) -> list[str | list[dict[str, Any]]]:
    """Prompts from a ``.txt`` file (one per non-blank line) or ``.jsonl`` (``prompt`` or ``messages``).

    For ``messages`` the prompt is the conversation up to its first assistant turn.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read prompts ({error})") from None
        prompts: list[str | list[dict[str, Any]]] = [line.strip() for line in lines if line.strip()]
    else:
        lines_read, problems = read_jsonl(path)
        if problems:
            raise ValueError("\n".join(str(p) for p in problems))
        prompts = [_prompt_of(line.value, f"{path}:{line.number}") for line in lines_read]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _prompt_of(value: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return value["prompt"]
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        messages = value["messages"]
        problems = [p for p in example_problems(value, "chat") if "assistant turn" not in p]
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        cut = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        if cut == 0:
            raise ValueError(
                f"{where}: the conversation starts with an assistant turn; nothing to prompt with"
            )
        return messages[:cut]
    raise ValueError(f'{where}: expected {{"prompt": ...}} or {{"messages": [...]}}')


@dataclass
class ComparedAnswer:
    """One prompt and the answers of the base and the tuned model."""

    prompt: str
    base: str
    tuned: str


def compare_run(
    run_dir: str | Path, prompts: list[str | list[dict[str, Any]]], options: GenerationOptions | None = None
) -> list[ComparedAnswer]:
    """Answer every prompt with the run's base model and with its tuned model."""
    options = options or GenerationOptions()
    base_run = load_run(run_dir, with_adapter=False)
    tuned_run = load_run(run_dir, with_adapter=True)
    rows = []
    for prompt in prompts:
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        ids = _encode(base_run.tokenizer, prompt, options)
        rows.append(
            ComparedAnswer(
                text,
                generate_text(base_run.model, base_run.tokenizer, ids, options),
                generate_text(tuned_run.model, tuned_run.tokenizer, ids, options),
            )
        )
    return rows


def _encode(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, Any]], options: GenerationOptions
) -> list[int]:
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt=prompt, use_chat_template=options.use_chat_template)
    return encode_prompt(tokenizer, messages=prompt)


def comparison_markdown(rows: list[ComparedAnswer], title: str, options: GenerationOptions) -> str:
    """A markdown table: prompt | base answer | tuned answer."""
    decoding = (
        "greedy"
        if options.temperature == 0
        else (
            f"sampled (temperature {options.temperature}, top_p {options.top_p}, top_k {options.top_k}, "
            f"seed {options.seed})"
        )
    )
    lines = [
        f"# Base vs tuned: {title}",
        "",
        f"Decoding: {decoding}, at most {options.max_new_tokens} new tokens.",
        "",
        "| # | prompt | base model | tuned model |",
        "|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        lines.append(f"| {number} | {_cell(row.prompt)} | {_cell(row.base)} | {_cell(row.tuned)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    escaped = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
    return escaped or "*(empty)*"
