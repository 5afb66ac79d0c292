"""Tokenisation and loss masks: exactly the assistant turns / the completion are trained."""

from __future__ import annotations

import pytest

from peftlab.data import IGNORE_INDEX, EncodingError, encode_chat, encode_classification, encode_completion
from peftlab.data.encode import TokenExample, fit_to_length
from peftlab.tokenization import BYTE_VOCAB_SIZE, PLAIN_CHAT_TEMPLATE, build_byte_tokenizer, stop_token_ids

CHATML_WITH_DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def trained_text(tokenizer, example: TokenExample) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    )


def test_byte_tokenizer_round_trips_text_and_fits_the_presets(tokenizer) -> None:
    text = "héllo wörld, 1+1=2 — 日本"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == BYTE_VOCAB_SIZE <= 512
    assert tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids("<|end|>") in stop_token_ids(tokenizer)


def test_chat_loss_mask_covers_exactly_the_assistant_turns(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."},
    ]
    example = encode_chat(messages, tokenizer)
    assert len(example.input_ids) == len(example.labels)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full
    # labels are the input ids where trained, IGNORE_INDEX elsewhere
    for token, label in zip(example.input_ids, example.labels, strict=True):
        assert label in (token, IGNORE_INDEX)
    assert trained_text(tokenizer, example) == "Hello!<|end|>\nSee you.<|end|>\n"
    # the trained tokens are the two assistant spans, contiguous, in place
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    first_span = tokenizer("Hello!<|end|>\n", add_special_tokens=False)["input_ids"]
    start = full.index("Hello!")  # bytes = tokens for ASCII text after the leading specials
    assert trained[: len(first_span)] == list(range(trained[0], trained[0] + len(first_span)))
    assert start > 0


def test_trailing_user_turn_is_not_trained_or_kept(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "unanswered"},
    ]
    example = encode_chat(messages, tokenizer)
    assert "unanswered" not in tokenizer.decode(example.input_ids)
    assert trained_text(tokenizer, example) == "A<|end|>\n"


def test_model_chat_template_is_used_turn_by_turn(tokenizer) -> None:
    chatml = build_byte_tokenizer()
    chatml.chat_template = CHATML_WITH_DEFAULT_SYSTEM
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    example = encode_chat(messages, chatml)
    assert chatml.decode(example.input_ids).startswith("<|im_start|>system\nBe helpful.")
    assert trained_text(chatml, example) == "4<|im_end|>\n"


def test_template_that_rewrites_earlier_turns_is_reported() -> None:
    odd = build_byte_tokenizer()
    # renders the turns newest first, so a conversation's rendering is not a prefix of the longer one
    odd.chat_template = "{% for m in messages|reverse %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(EncodingError, match="turn by turn"):
        encode_chat(messages, odd)


def test_template_exception_becomes_encoding_error() -> None:
    strict = build_byte_tokenizer()
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(EncodingError, match="roles must alternate"):
        encode_chat([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], strict)


def test_completion_mask_covers_completion_and_eos_only(tokenizer) -> None:
    example = encode_completion("Translate: cat ->", " chat", tokenizer)
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert trained_text(tokenizer, example) == " chat<|eos|>"
    assert tokenizer.decode(example.input_ids) == "<|bos|>Translate: cat -> chat<|eos|>"


def test_classification_example_keeps_label(tokenizer) -> None:
    example = encode_classification("great film", 1, tokenizer)
    assert example.label == 1
    assert tokenizer.decode(example.input_ids, skip_special_tokens=True) == "great film"


def test_max_length_is_an_error_unless_truncation_is_on(tokenizer) -> None:
    example = encode_completion("p", "x" * 50, tokenizer)
    fitted, message = fit_to_length(example, 20, truncate=False)
    assert fitted is None and "over max_length 20" in message
    fitted, message = fit_to_length(example, 20, truncate=True)
    assert fitted is not None and len(fitted.input_ids) == 20 and "truncated" in message
    assert fitted.labels == example.labels[:20]
    # a cut that leaves nothing to train on stays an error
    long_prompt = encode_completion("p" * 40, "x", tokenizer)
    fitted, message = fit_to_length(long_prompt, 20, truncate=True)
    assert fitted is None and "nothing is left to train on" in message


def test_left_truncation_keeps_the_completion_and_cuts_the_prompt(tokenizer) -> None:
    example = encode_completion("p" * 40, " answer", tokenizer)
    fitted, message = fit_to_length(example, 20, truncate=True, side="left")
    assert fitted is not None and "truncated" in message
    assert fitted.input_ids == example.input_ids[-20:] and fitted.labels == example.labels[-20:]
    assert trained_text(tokenizer, fitted) == trained_text(tokenizer, example) == " answer<|eos|>"
    # the right side would have cut the whole completion away
    assert fit_to_length(example, 20, truncate=True, side="right")[0] is None
    with pytest.raises(ValueError, match="truncation_side is 'middle'"):
        fit_to_length(example, 20, truncate=True, side="middle")


def test_plain_template_is_documented_format(tokenizer) -> None:
    assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|bos|><|user|>\nHi!<|end|>\n<|assistant|>\n"
