"""Zero-shot scoring of a decoder on a task: multiple-choice log-likelihood over the answer choices
(or greedy exact match for free-form tasks), with the model's chat template or as plain text.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from peftlab.models import load_pretrained
from peftlab.scoring import AccuracyResult, chat_prompt, exact_match_accuracy, multiple_choice_accuracy
from peftlab.sources.assets import AssetError
from peftlab.sources.models import cache_gguf_as_safetensors, load_gguf_model, load_gguf_tokenizer
from peftlab.sources.task import MULTIPLE_CHOICE, Example, Task, decoder_prompt, user_message
from peftlab.tokenization import load_tokenizer, stop_token_ids


def task_contexts(
    task: Task, examples: tuple[Example, ...] | list[Example], tokenizer: PreTrainedTokenizerBase, chat: bool
) -> list[str]:
    """The text each example's answer follows: a chat-templated user turn, or the plain decoder prompt."""
    if chat:
        return [chat_prompt(tokenizer, user_message(task.prompt, example)) for example in examples]
    return [decoder_prompt(task.prompt, example) for example in examples]


def zero_shot_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    split: str = "test",
    limit: int | None = None,
    chat: bool = True,
    normalize: str = "none",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> AccuracyResult:
    """Score the first ``limit`` examples of ``split`` as the task asks (multiple choice or exact match)."""
    examples = task.split(split)[:limit]
    if not examples:
        raise ValueError(f"task {task.name!r} has no examples in split {split!r}")
    contexts = task_contexts(task, examples, tokenizer, chat)
    add_special_tokens = not chat  # a chat template writes its own BOS
    if task.scoring == MULTIPLE_CHOICE:
        return multiple_choice_accuracy(
            model,
            tokenizer,
            contexts,
            [example.choices for example in examples],
            [example.label for example in examples],
            normalize=normalize,
            batch_size=batch_size,
            add_special_tokens=add_special_tokens,
        )
    return exact_match_accuracy(
        model,
        tokenizer,
        contexts,
        [example.accepted_answers for example in examples],
        max_new_tokens=max_new_tokens,
        stop_ids=stop_token_ids(tokenizer),
        pattern=task.details.get("output_regex"),
        add_special_tokens=add_special_tokens,
    )


def load_decoder(
    model: str, gguf_file: str | None = None, cache: bool = True, cache_dir: str | Path | None = None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a GGUF source (package, folder or file) or a Hugging Face folder/id.

    GGUF models go through the safetensors cache unless ``cache=False``.
    """
    folder = Path(model).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return load_pretrained(str(folder)), load_tokenizer(folder)
    try:
        if cache:
            cached = cache_gguf_as_safetensors(model, gguf_file, cache_dir)
            return load_pretrained(str(cached)), load_tokenizer(cached)
        return load_gguf_model(model, gguf_file), load_gguf_tokenizer(model, gguf_file)
    except AssetError:
        if folder.exists() or "/" not in model:
            raise
        return load_pretrained(model), load_tokenizer(model)  # a Hugging Face id
