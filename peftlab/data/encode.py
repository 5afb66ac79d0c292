"""Tokenise examples into ``input_ids`` + ``labels`` with loss masks.

Chat examples are rendered with the tokenizer's chat template one turn at a time: the text up to each
assistant turn's generation prompt is context (label ``IGNORE_INDEX``), the assistant turn itself (its
content and the template's end-of-turn text) is trained. Completion examples train the completion and
EOS, never the prompt. Labels are aligned with ``input_ids`` (the loss shifts them by one position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from peftlab.data.records import CHAT, CLASSIFICATION, COMPLETION

IGNORE_INDEX = -100


@dataclass
class TokenExample:
    """A causal-LM example: token ids and per-token labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    def num_trained_tokens(self) -> int:
        """Tokens the loss is taken on (the first token is never predicted)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


@dataclass
class ClassificationExample:
    """A sequence-classification example: token ids, one class id and, for a sentence pair whose
    tokenizer marks the segments (BERT), the segment of each token."""

    input_ids: list[int]
    label: int
    token_type_ids: list[int] | None = None


Example = TokenExample | ClassificationExample


class EncodingError(ValueError):
    """An example that cannot be tokenised (e.g. a chat template that rejects it); the message says why."""


def encode_example(
    value: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase, **fields: str
) -> Example:
    """Tokenise one validated example of format ``fmt``
    (``fields``: ``text_field``, ``label_field``, ``text_pair_field``)."""
    if fmt == CHAT:
        return encode_chat(value["messages"], tokenizer)
    if fmt == COMPLETION:
        return encode_completion(value["prompt"], value["completion"], tokenizer)
    if fmt == CLASSIFICATION:
        text_field = fields.get("text_field", "text")
        label_field = fields.get("label_field", "label")
        pair_field = fields.get("text_pair_field")
        text_pair = value[pair_field] if pair_field else None
        return encode_classification(value[text_field], value[label_field], tokenizer, text_pair)
    raise ValueError(f"unknown data format {fmt!r}")


def encode_chat(messages: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> TokenExample:
    """Tokenise a conversation; only the assistant turns get labels."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for index, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        if index == 0:
            raise EncodingError("the conversation starts with an assistant turn; put a user turn before it")
        context = _render(tokenizer, turns[:index], add_generation_prompt=True)
        with_answer = _render(tokenizer, turns[: index + 1], add_generation_prompt=False)
        if not context.startswith(rendered) or not with_answer.startswith(context):
            raise EncodingError(
                "the chat template does not render the conversation turn by turn, so the assistant turns "
                "cannot be located; use the completion format for this model"
            )
        context_ids = _tokens(tokenizer, context[len(rendered) :])
        answer_ids = _tokens(tokenizer, with_answer[len(context) :])
        input_ids += context_ids + answer_ids
        labels += [IGNORE_INDEX] * len(context_ids) + answer_ids
        rendered = with_answer
    return TokenExample(input_ids, labels)


def encode_completion(prompt: str, completion: str, tokenizer: PreTrainedTokenizerBase) -> TokenExample:
    """``prompt`` (with the tokenizer's leading special tokens), then the trained ``completion`` + EOS."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = _tokens(tokenizer, completion)
    if tokenizer.eos_token_id is not None:
        completion_ids.append(int(tokenizer.eos_token_id))
    return TokenExample(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids)


def encode_classification(
    text: str, label: int, tokenizer: PreTrainedTokenizerBase, text_pair: str | None = None
) -> ClassificationExample:
    """``text`` (and ``text_pair``, joined as the tokenizer joins two segments) with the tokenizer's
    special tokens, and its class id. A pair keeps the tokenizer's segment ids when it makes them."""
    encoded = tokenizer(text, text_pair, add_special_tokens=True)
    segments = encoded.get("token_type_ids") if text_pair is not None else None
    return ClassificationExample(
        list(encoded["input_ids"]), int(label), list(segments) if segments is not None else None
    )


def check_pair_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise ``ValueError`` naming ``data.text_pair_field`` when ``tokenizer`` joins the two texts of a
    pair with nothing between them (GPT-2's has no pair template), so a model could not tell them apart."""
    if tokenizer.num_special_tokens_to_add(pair=True) <= tokenizer.num_special_tokens_to_add(pair=False):
        raise ValueError(
            f"data.text_pair_field: the tokenizer ({type(tokenizer).__name__}) joins the two texts of a pair "
            "with no token between them; use a model whose tokenizer has a pair template (BERT, RoBERTa, "
            "...), or join the texts in the data yourself and unset data.text_pair_field"
        )


TRUNCATION_SIDES = ("right", "left")


def check_truncation_side(side: str) -> None:
    """Raise ``ValueError`` naming ``data.truncation_side`` unless ``side`` is one of ``TRUNCATION_SIDES``."""
    if side not in TRUNCATION_SIDES:
        raise ValueError(f"data.truncation_side is {side!r}; choose one of {', '.join(TRUNCATION_SIDES)}")


def fit_to_length(
    example: Example, max_length: int, truncate: bool, side: str = "right"
) -> tuple[Example | None, str | None]:
    """Apply ``max_length``: returns ``(example, None)`` when it fits, a truncated example and a warning
    when ``truncate`` allows cutting it, or ``(None, error)`` when it cannot be used.

    ``side="right"`` keeps the first ``max_length`` tokens; ``side="left"`` keeps the last ones, so a
    prompt/completion example keeps its completion and loses the start of its prompt (as the
    multiple-choice scorer cuts contexts). Classification examples are always cut on the right.
    """
    check_truncation_side(side)
    length = len(example.input_ids)
    if length <= max_length:
        return example, None
    if not truncate:
        return None, (
            f"{length} tokens after tokenisation, over max_length {max_length} "
            "(raise data.max_length, shorten the example, or set data.truncation=true)"
        )
    if isinstance(example, ClassificationExample):
        segments = example.token_type_ids[:max_length] if example.token_type_ids is not None else None
        cut_example = ClassificationExample(example.input_ids[:max_length], example.label, segments)
        return cut_example, f"truncated from {length} to {max_length} tokens"
    kept = slice(length - max_length, None) if side == "left" else slice(0, max_length)
    cut = TokenExample(example.input_ids[kept], example.labels[kept])
    if cut.num_trained_tokens() == 0:
        return None, f"{length} tokens; truncated to max_length {max_length} nothing is left to train on"
    return cut, f"truncated from {length} to {max_length} tokens"


def _render(
    tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, Any]], add_generation_prompt: bool
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except (
        Exception
    ) as error:  # templates are third-party Jinja code and may raise anything (e.g. raise_exception)
        raise EncodingError(f"the chat template rejects this conversation ({error})") from None
    if not isinstance(text, str):
        raise EncodingError(f"the chat template rendered {type(text).__name__}, expected text")
    return text


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
