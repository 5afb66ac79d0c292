"""Scoring checked against hand computations on tiny config-built models (float64 references)."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.models import build_model
from peftlab.scoring import (
    accuracy,
    chat_prompt,
    classifier_accuracy,
    classifier_predictions,
    continuation_log_likelihoods,
    exact_match,
    exact_match_accuracy,
    extract_answer,
    greedy_generate,
    multiple_choice_accuracy,
    multiple_choice_scores,
    normalize_answer,
)
from peftlab.sources.task import Example, PromptFormat, Task, user_message
from peftlab.sources.zero_shot import task_contexts, zero_shot_accuracy
from peftlab.tokenization import build_byte_tokenizer

CONTEXTS = ["Review: a gorgeous, moving film.\nSentiment:", "Q: 2+2?\nA:", "x"]
CHOICES = [[" positive", " negative"], [" 4", " four", " 22"], ["y", "yz", "a much longer choice"]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def decoder():
    model = build_model("tiny-llama", seed=3)
    model.train()  # scoring must switch to eval mode and back
    return model


def reference_log_likelihood(model: torch.nn.Module, bos_id: int, context: str, continuation: str) -> float:
    """float64, one unpadded sequence, ids written by hand (byte tokenizer: id = byte value)."""
    context_ids = [bos_id, *context.encode()]
    continuation_ids = list(continuation.encode())
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(float(log_probs[len(context_ids) + i - 1, token]) for i, token in enumerate(continuation_ids))


@pytest.fixture(scope="module")
def reference_scores(decoder, tokenizer):
    double = copy.deepcopy(decoder).double().eval()
    return [
        [reference_log_likelihood(double, tokenizer.bos_token_id, context, choice) for choice in options]
        for context, options in zip(CONTEXTS, CHOICES, strict=True)
    ]


def test_choice_log_likelihood_is_the_sum_of_choice_token_log_probs(decoder, tokenizer, reference_scores):
    # batch_size 2 mixes sequences of different lengths in one padded batch
    scores = multiple_choice_scores(
        decoder, tokenizer, CONTEXTS, CHOICES, batch_size=2, add_special_tokens=True
    )
    for got, expected in zip(scores, reference_scores, strict=True):
        assert got == pytest.approx(expected, abs=2e-4)
    assert decoder.training, "the model's training flag must be restored"


def test_highest_scoring_choice_is_picked(decoder, tokenizer, reference_scores):
    labels = [0, 1, 2]
    result = multiple_choice_accuracy(decoder, tokenizer, CONTEXTS, CHOICES, labels, add_special_tokens=True)
    expected = [max(range(len(row)), key=row.__getitem__) for row in reference_scores]
    assert result.predictions == expected
    assert result.correct == sum(p == label for p, label in zip(expected, labels, strict=True))
    assert result.accuracy == pytest.approx(result.correct / 3)


@pytest.mark.parametrize("how", ["tokens", "chars"])
def test_length_normalisation_divides_by_choice_length(decoder, tokenizer, reference_scores, how):
    scores = multiple_choice_scores(
        decoder, tokenizer, CONTEXTS, CHOICES, normalize=how, add_special_tokens=True
    )
    for got, expected, options in zip(scores, reference_scores, CHOICES, strict=True):
        # byte tokenizer: one token per byte, and these choices are ASCII, so tokens == chars
        lengths = [len(option.encode()) for option in options]
        assert got == pytest.approx([e / n for e, n in zip(expected, lengths, strict=True)], abs=2e-4)
    # the longest choice of the last context gains from normalisation relative to the raw sum
    raw = reference_scores[2]
    assert scores[2][2] - scores[2][0] > raw[2] - raw[0]


def test_unknown_normalisation_is_rejected(decoder, tokenizer):
    with pytest.raises(ValueError, match="unknown normalisation 'bytes'"):
        multiple_choice_scores(decoder, tokenizer, CONTEXTS, CHOICES, normalize="bytes")


def test_trailing_context_space_moves_onto_the_continuation(decoder, tokenizer):
    moved = continuation_log_likelihoods(decoder, tokenizer, ["Answer: "], ["yes"], add_special_tokens=True)[
        0
    ]
    written = continuation_log_likelihoods(
        decoder, tokenizer, ["Answer:"], [" yes"], add_special_tokens=True
    )[0]
    assert moved.log_likelihood == pytest.approx(written.log_likelihood, abs=1e-6)
    assert moved.num_tokens == written.num_tokens == 4


def test_shared_context_and_separate_sequences_agree(decoder, tokenizer):
    # single-token choices share one forward pass of the context; scoring them one by one must agree
    together = continuation_log_likelihoods(decoder, tokenizer, ["ctx", "ctx", "ctx"], ["a", "b", "bc"])
    alone = [continuation_log_likelihoods(decoder, tokenizer, ["ctx"], [c])[0] for c in ("a", "b", "bc")]
    assert [s.log_likelihood for s in together] == pytest.approx([s.log_likelihood for s in alone], abs=1e-5)


def test_max_length_cuts_the_context_from_the_left(decoder, tokenizer):
    cut = continuation_log_likelihoods(decoder, tokenizer, ["0123456789"], ["ab"], max_length=6)[0]
    short = continuation_log_likelihoods(decoder, tokenizer, ["6789"], ["ab"])[0]
    assert cut.log_likelihood == pytest.approx(short.log_likelihood, abs=1e-6)
    # the multiple-choice scorers pass the cut through, per choice
    long_contexts = ["0123456789 is", "abcdefghij is"]
    options = [[" ab", " abcd"], [" x", " xyz"]]
    scores = multiple_choice_scores(decoder, tokenizer, long_contexts, options, max_length=8)
    expected = [
        [
            continuation_log_likelihoods(decoder, tokenizer, [c], [o], max_length=8)[0].log_likelihood
            for o in row
        ]
        for c, row in zip(long_contexts, options, strict=True)
    ]
    uncut = multiple_choice_scores(decoder, tokenizer, long_contexts, options)
    assert scores == [pytest.approx(row, abs=1e-5) for row in expected]
    assert scores != [pytest.approx(row, abs=1e-5) for row in uncut]
    result = multiple_choice_accuracy(decoder, tokenizer, long_contexts, options, [0, 1], max_length=8)
    assert result.predictions == [max(range(2), key=row.__getitem__) for row in expected]


def test_empty_context_without_bos_is_an_error(decoder, tokenizer):
    with pytest.raises(ValueError, match="context is empty"):
        continuation_log_likelihoods(decoder, tokenizer, [""], ["a"], add_special_tokens=False)


def test_chat_prompt_uses_the_tokenizer_template(tokenizer):
    prompt = chat_prompt(tokenizer, "Hi?", system="Be terse.")
    assert prompt == "<|bos|><|system|>\nBe terse.<|end|>\n<|user|>\nHi?<|end|>\n<|assistant|>\n"


def test_greedy_generate_matches_transformers_generate(decoder, tokenizer):
    context = "The cat"
    ids = tokenizer(context, return_tensors="pt")
    decoder.eval()
    expected = decoder.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    decoder.train()
    new_tokens = expected[0, ids["input_ids"].shape[1] :].tolist()
    assert greedy_generate(decoder, tokenizer, context, 6, add_special_tokens=True) == tokenizer.decode(
        new_tokens
    )
    # a stop id ends the answer before that token
    stopped = greedy_generate(
        decoder, tokenizer, context, 6, stop_ids=[new_tokens[3]], add_special_tokens=True
    )
    assert stopped == tokenizer.decode(new_tokens[: new_tokens.index(new_tokens[3])])


def test_answer_normalisation_and_extraction():
    assert normalize_answer("  The   Answer. ") == "the answer"
    assert exact_match("Paris.", ["paris"])
    assert not exact_match("Lyon", ["Paris"])
    assert extract_answer("it is 109, I think", r"[-+]?\d+") == "109"
    assert exact_match("the sum is 109", ["109"], pattern=r"[-+]?\d+")
    assert not exact_match("no number here", ["109"], pattern=r"[-+]?\d+")


def test_exact_match_accuracy_counts_generated_answers(decoder, tokenizer):
    contexts = ["abc", "xyz"]
    produced = greedy_generate(decoder, tokenizer, "abc", 4, add_special_tokens=True)
    result = exact_match_accuracy(
        decoder,
        tokenizer,
        contexts,
        [[produced], ["surely not this"]],
        max_new_tokens=4,
        add_special_tokens=True,
        first_line_only=False,
    )
    assert (result.correct, result.total) == (1, 2)
    assert result.predictions[0] == produced


def test_classifier_accuracy_matches_unpadded_per_example_predictions(tokenizer):
    model = build_model("tiny-bert", task="sequence_classification", num_labels=3, seed=1)
    texts = ["short", "a somewhat longer sentence here", "mid length text", "x"]
    labels = [0, 1, 2, 1]
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            expected.append(int(model(**ids).logits.argmax(-1)))
    assert classifier_predictions(model, tokenizer, texts, batch_size=3) == expected
    result = classifier_accuracy(model, tokenizer, texts, labels, batch_size=3)
    assert result.correct == sum(p == y for p, y in zip(expected, labels, strict=True))
    assert result.total == 4


def test_accuracy_rejects_mismatched_or_empty_inputs():
    assert accuracy([1, 0, 1], [1, 1, 1]).accuracy == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        accuracy([1, 0, 1], [1, 1])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def small_task(examples: tuple[Example, ...], scoring: str = "multiple_choice") -> Task:
    prompt = PromptFormat(prefix="Sentiment?\n", input_prefix="\nText: ", output_prefix="\nAnswer:")
    return Task("toy", "toy task", ("negative", "positive"), prompt, (), (), examples, scoring=scoring)


def test_zero_shot_scores_the_task_choices_with_the_chat_template(decoder, tokenizer):
    choices = ("negative", "positive")
    examples = (Example("great", 1, choices), Example("awful", 0, choices), Example("fine", 1, choices))
    task = small_task(examples)
    contexts = task_contexts(task, examples, tokenizer, chat=True)
    assert contexts[0] == chat_prompt(tokenizer, user_message(task.prompt, examples[0]))
    assert contexts[0].endswith("Text: great\nAnswer:<|end|>\n<|assistant|>\n")
    expected = multiple_choice_accuracy(decoder, tokenizer, contexts, [choices] * 3, [1, 0, 1])
    result = zero_shot_accuracy(decoder, tokenizer, task, limit=3)
    assert result.predictions == expected.predictions
    assert zero_shot_accuracy(decoder, tokenizer, task, limit=2).total == 2


def test_zero_shot_exact_match_branch_generates_answers(decoder, tokenizer):
    plain = small_task((Example("abc", answers=("zzz",)),), scoring="exact_match")
    context = task_contexts(plain, plain.test, tokenizer, chat=False)[0]
    produced = greedy_generate(decoder, tokenizer, context, 16, add_special_tokens=True)
    result = zero_shot_accuracy(decoder, tokenizer, plain, chat=False)
    assert result.predictions == [next((line for line in produced.splitlines() if line.strip()), "")]
    assert result.correct == int(exact_match(result.predictions[0], ["zzz"]))
