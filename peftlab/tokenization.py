"""Tokenizers: an offline byte-level tokenizer for the presets; ``AutoTokenizer`` for real models.

The byte tokenizer needs no download. Ids 0-255 are the raw UTF-8 bytes (so any text round-trips), then
a few special tokens follow; the whole vocabulary (263 ids) fits the presets' ``vocab_size=512``.

Chat formatting uses the model's own chat template when its tokenizer has one. Otherwise it uses
``PLAIN_CHAT_TEMPLATE``, which renders a conversation as::

    <|bos|><|system|>
    You are terse.<|end|>
    <|user|>
    Hi!<|end|>
    <|assistant|>
    Hello.<|end|>

Each turn is ``<|ROLE|>`` + newline + content + ``<|end|>`` + newline. A generation prompt is
``<|assistant|>`` + newline. (``<|bos|>`` stands for the tokenizer's BOS token, left out when it has none.)
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
END_OF_TURN_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS, END_OF_TURN_TOKEN)
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# End-of-turn markers of common chat templates; generation stops at any of them that the tokenizer knows.
KNOWN_END_OF_TURN_TOKENS = (END_OF_TURN_TOKEN, "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table that ``tokenizers``' ByteLevel pre-tokenizer uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (ids 0-255 = bytes) with pad/bos/eos/chat tokens and the plain chat template.

    Encoding with special tokens prepends ``<|bos|>``, as Llama tokenizers do; a text pair is
    ``<|bos|> A <|eos|> B``.
    """
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B",
        special_tokens=[(token, backend.token_to_id(token)) for token in (BOS_TOKEN, EOS_TOKEN)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[*ROLE_TOKENS, END_OF_TURN_TOKEN],
    )
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(name_or_path: str | Path | None, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a Hugging Face id / local path, or the byte tokenizer when ``name_or_path`` is None.

    Either way the result has a pad token (EOS when the model defines none) and a chat template
    (``PLAIN_CHAT_TEMPLATE`` when the model has none), so every data format works with it.
    """
    if name_or_path is None:
        return build_byte_tokenizer()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token and a chat template when it lacks them; pad on the right."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token; cannot pad batches"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a generated answer: EOS plus any known end-of-turn marker in the vocabulary."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocabulary = tokenizer.get_vocab()
    for token in KNOWN_END_OF_TURN_TOKENS:
        if token in vocabulary and vocabulary[token] not in ids:
            ids.append(int(vocabulary[token]))
    return ids
