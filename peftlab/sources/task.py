"""A labelled task in plain shapes: examples with their answer choices, split three ways, and the records
the training engine reads (classification, completion, chat).

An ``Example`` holds one input ``text``. Classification and multiple-choice examples carry ``choices`` (the
answer verbalisations, in label order) and ``label`` (the index of the correct one); free-form examples
carry ``answers`` only (scored by exact match). A decoder sees the text through the task's
``PromptFormat``, built the way BIG-bench builds its prompts:
``prefix + input_prefix + text [+ choice_prefix + choice ...] + output_prefix``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MULTIPLE_CHOICE = "multiple_choice"
EXACT_MATCH = "exact_match"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PromptFormat:
    """How a decoder sees an example (BIG-bench's defaults for the prefixes)."""

    prefix: str = ""
    input_prefix: str = "\nQ: "
    output_prefix: str = "\nA: "
    choice_prefix: str = "\n  choice: "
    append_choices: bool = False


@dataclass(frozen=True)
class Example:
    """One input with its answer: a ``label`` into ``choices``, or free-form ``answers``."""

    text: str
    label: int | None = None
    choices: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()

    @property
    def answer(self) -> str:
        """The reference answer a decoder should produce."""
        if self.label is not None:
            return self.choices[self.label]
        return self.answers[0]

    @property
    def accepted_answers(self) -> tuple[str, ...]:
        """Every answer exact-match scoring accepts."""
        if self.answers:
            return self.answers
        return (self.answer,)


@dataclass(frozen=True)
class Task:
    """A named task: its examples split into train/valid/test, and how to show and score them."""

    name: str
    description: str
    label_names: tuple[str, ...]  # the fixed classes in label order; () when choices vary by example
    prompt: PromptFormat
    train: tuple[Example, ...]
    valid: tuple[Example, ...]
    test: tuple[Example, ...]
    scoring: str = MULTIPLE_CHOICE  # multiple_choice | exact_match
    source: str = ""
    license: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # split seed and sizes, counts dropped, ...

    def split(self, name: str) -> tuple[Example, ...]:
        """The examples of split ``name`` (train, valid or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """Everything about the task except its examples, as JSON-ready values."""
        return {
            "task": self.name,
            "description": self.description,
            "label_names": list(self.label_names),
            "num_labels": len(self.label_names),
            "scoring": self.scoring,
            "splits": {name: len(self.split(name)) for name in SPLITS},
            "prompt_format": asdict(self.prompt),
            "source": self.source,
            "license": self.license,
            **self.details,
        }


def decoder_prompt(prompt: PromptFormat, example: Example) -> str:
    """The text a decoder completes: prefix, input, the choices when the task lists them, output prefix."""
    text = prompt.prefix + prompt.input_prefix + example.text
    if prompt.append_choices and example.choices:
        text += prompt.choice_prefix + prompt.choice_prefix.join(example.choices)
    return text + prompt.output_prefix


def classification_record(example: Example) -> dict[str, Any]:
    """``{"text", "label"}`` for an encoder; the example must have a label."""
    if example.label is None:
        raise ValueError(
            f"example {example.text[:60]!r} has no label; export free-form tasks as completion or chat"
        )
    return {"text": example.text, "label": example.label}


def completion_record(prompt: PromptFormat, example: Example) -> dict[str, str]:
    """``{"prompt", "completion"}``: the decoder prompt (trailing spaces moved onto the answer) and the answer."""
    text = decoder_prompt(prompt, example)
    stripped = text.rstrip(" ")
    separator = "" if stripped.endswith("\n") or not stripped else " "
    return {"prompt": stripped, "completion": separator + example.answer}


def user_message(prompt: PromptFormat, example: Example) -> str:
    """The user turn of a chat: the decoder prompt without surrounding whitespace."""
    return decoder_prompt(prompt, example).strip()


def chat_record(prompt: PromptFormat, example: Example) -> dict[str, list[dict[str, str]]]:
    """``{"messages": [user, assistant]}`` with the answer as the assistant turn."""
    return {
        "messages": [
            {"role": "user", "content": user_message(prompt, example)},
            {"role": "assistant", "content": example.answer},
        ]
    }
