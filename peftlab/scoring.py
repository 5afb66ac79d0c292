"""Task scoring: multiple-choice log-likelihood and exact match for decoders, accuracy for classifiers.

Multiple choice (as in BIG-bench and lm-evaluation-harness): each choice's score is the log-likelihood
of its tokens after the context, ``sum_t log p(choice_t | context, choice_<t)``, and the prediction is the
highest-scoring choice. Optional length normalisation divides by the number of choice tokens
(``"tokens"``) or characters (``"chars"``). Context and choice are tokenised together and split where
the context's own tokens end, so merges across the boundary are handled; trailing spaces of the context
move onto the choice.

Every function works on plain strings, so prompts can come from a chat template (``chat_prompt``) or
be plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

NORMALIZATIONS = ("none", "tokens", "chars")


@dataclass(frozen=True)
class ContinuationScore:
    """The log-likelihood of a continuation after its context, and its length."""

    log_likelihood: float
    num_tokens: int
    num_chars: int

    def normalized(self, how: str = "none") -> float:
        """The score under length normalisation ``how`` (none | tokens | chars)."""
        if how == "none":
            return self.log_likelihood
        if how == "tokens":
            return self.log_likelihood / self.num_tokens
        if how == "chars":
            return self.log_likelihood / max(self.num_chars, 1)
        raise ValueError(f"unknown normalisation {how!r}; choose one of {', '.join(NORMALIZATIONS)}")


@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy over a set of examples, with each prediction kept for inspection."""

    accuracy: float
    correct: int
    total: int
    predictions: list


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_content: str, system: str | None = None) -> str:
    """The model's chat template applied to one user turn, ending where the assistant's answer starts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_content}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, add_special_tokens: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the continuation that follows it."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    if not context_ids:
        raise ValueError("the context is empty and the tokenizer adds no BOS token; nothing to condition on")
    if len(whole) <= len(context_ids):
        raise ValueError(f"the continuation {continuation!r} adds no tokens after its context")
    return context_ids, whole[len(context_ids) :]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, restoring its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, -ids.shape[1] :]  # drop the positions of any virtual tokens a method prepends


def continuation_log_likelihoods(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
    add_special_tokens: bool = False,
    max_length: int | None = None,
) -> list[ContinuationScore]:
    """The log-likelihood of each continuation after its context.

    The model reads ``context + continuation[:-1]`` (the last token is only predicted), so choices of one
    token after the same context share a single forward pass; distinct inputs run longest first in
    batches of ``batch_size``. ``add_special_tokens`` should be True for plain-text contexts on tokenizers
    that add a BOS token, and False for chat-template contexts (the template writes its own). With
    ``max_length``, contexts are cut from the left so context + continuation fits.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    pairs = [
        encode_pair(tokenizer, c, x, add_special_tokens) for c, x in zip(contexts, continuations, strict=True)
    ]
    if max_length is not None:
        pairs = [(context[max(0, len(context) + len(cont) - max_length) :], cont) for context, cont in pairs]
    first_needed: dict[tuple[int, ...], int] = {}  # per input: the first position any continuation needs
    for context, cont in pairs:
        key = tuple(context + cont[:-1])
        first_needed[key] = min(first_needed.get(key, len(key)), len(context) - 1)
    inputs = sorted(first_needed, key=len, reverse=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log_probs: dict[tuple[int, ...], torch.Tensor] = {}
    with evaluating(model):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            ids, mask = _padded([list(row) for row in batch], pad_id, _device(model))
            logits = _logits(model, ids, mask)
            for row, sequence in enumerate(batch):
                needed = logits[row, first_needed[sequence] : len(sequence)]
                log_probs[sequence] = needed.float().log_softmax(-1).cpu()
    scores = []
    for (context, cont), text in zip(pairs, continuations, strict=True):
        # position p of the input predicts token p + 1; the continuation starts at len(context)
        key = tuple(context + cont[:-1])
        predicting = log_probs[key][len(context) - 1 - first_needed[key] :]
        token_log_probs = predicting.gather(-1, torch.tensor(cont)[:, None]).squeeze(-1)
        scores.append(ContinuationScore(float(token_log_probs.double().sum()), len(cont), len(text)))
    return scores


def multiple_choice_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    normalize: str = "none",
    batch_size: int = 8,
    add_special_tokens: bool = False,
    max_length: int | None = None,
) -> list[list[float]]:
    """Each choice's (optionally length-normalised) log-likelihood, per context (cut from the left to
    ``max_length`` tokens with its choice, when given)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if len(contexts) != len(choices):
        raise ValueError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    flat_contexts = [context for context, options in zip(contexts, choices, strict=True) for _ in options]
    flat_choices = [option for options in choices for option in options]
    flat = continuation_log_likelihoods(
        model, tokenizer, flat_contexts, flat_choices, batch_size, add_special_tokens, max_length
    )
    scores, position = [], 0
    for options in choices:
        scores.append([score.normalized(normalize) for score in flat[position : position + len(options)]])
        position += len(options)
    return scores


def accuracy(predictions: Sequence, references: Sequence) -> AccuracyResult:
    """The fraction of predictions equal to their reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no examples to score")
    correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
    return AccuracyResult(correct / len(predictions), correct, len(predictions), list(predictions))


def multiple_choice_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    labels: Sequence[int],
    normalize: str = "none",
    batch_size: int = 8,
    add_special_tokens: bool = False,
    max_length: int | None = None,
) -> AccuracyResult:
    """Accuracy of picking the highest-scoring choice (the first one on ties); ``max_length`` as in
    ``multiple_choice_scores``."""
    scores = multiple_choice_scores(
        model, tokenizer, contexts, choices, normalize, batch_size, add_special_tokens, max_length
    )
    predictions = [max(range(len(row)), key=row.__getitem__) for row in scores]
    return accuracy(predictions, list(labels))


def normalize_answer(text: str) -> str:
    """Lower-case, whitespace collapsed, surrounding spaces and a final full stop removed."""
    return " ".join(text.split()).casefold().removesuffix(".").strip()


def extract_answer(text: str, pattern: str | None = None) -> str:
    """The first match of ``pattern`` in ``text`` (BIG-bench's ``output_regex``), or ``text`` itself."""
    if pattern is None:
        return text
    match = re.search(pattern, text)
    return match.group(0) if match else ""


def exact_match(prediction: str, answers: Sequence[str], pattern: str | None = None) -> bool:
    """True when the (extracted, normalised) prediction equals one of the normalised answers."""
    return normalize_answer(extract_answer(prediction, pattern)) in {normalize_answer(a) for a in answers}


def greedy_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    max_new_tokens: int = 16,
    stop_ids: Sequence[int] = (),
    add_special_tokens: bool = False,
) -> str:
    """The greedy continuation of ``context`` up to a stop token (full forward pass per step, any model)."""
    ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    if not ids:
        raise ValueError("the context is empty and the tokenizer adds no BOS token; nothing to condition on")
    generated: list[int] = []
    with evaluating(model):
        for _ in range(max_new_tokens):
            batch = torch.tensor([ids + generated], device=_device(model))
            next_id = int(_logits(model, batch, torch.ones_like(batch))[0, -1].argmax())
            if next_id in stop_ids:
                break
            generated.append(next_id)
    return tokenizer.decode(generated, skip_special_tokens=True)


def exact_match_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    answers: Sequence[Sequence[str]],
    max_new_tokens: int = 16,
    stop_ids: Sequence[int] = (),
    pattern: str | None = None,
    add_special_tokens: bool = False,
    first_line_only: bool = True,
) -> AccuracyResult:
    """Accuracy of greedy answers that exactly match an accepted answer (after ``normalize_answer``).

    With ``first_line_only`` only the first non-empty line of each generation counts as the answer.
    """
    if len(contexts) != len(answers):
        raise ValueError(f"{len(contexts)} contexts but {len(answers)} answer lists")
    generations = [
        greedy_generate(model, tokenizer, context, max_new_tokens, stop_ids, add_special_tokens)
        for context in contexts
    ]
    if first_line_only:
        generations = [next((line for line in text.splitlines() if line.strip()), "") for text in generations]
    hits = [exact_match(text, accepted, pattern) for text, accepted in zip(generations, answers, strict=True)]
    result = accuracy(hits, [True] * len(hits))
    return AccuracyResult(result.accuracy, result.correct, result.total, generations)


def classifier_predictions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 256,
) -> list[int]:
    """The arg-max class of a sequence classifier for each text."""
    predictions: list[int] = []
    with evaluating(model):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(_device(model))
            predictions.extend(int(i) for i in model(**batch).logits.argmax(-1))
    return predictions


def classifier_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 32,
    max_length: int = 256,
) -> AccuracyResult:
    """Accuracy of a sequence classifier's arg-max class."""
    return accuracy(classifier_predictions(model, tokenizer, texts, batch_size, max_length), list(labels))
