"""The three example formats and the checks every example must pass before it is tokenised.

- chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``
  (loss on the assistant turns only);
- completion: ``{"prompt": "...", "completion": "..."}`` (loss on the completion only);
- classification: ``{"text": "...", "label": 0}`` (encoder models; field names are configurable), or a
  sentence pair ``{"premise": "...", "hypothesis": "...", "label": 0}`` with ``text_pair_field`` naming the
  second text (GLUE MNLI, RTE, MRPC, ...).

Checks return messages instead of raising, whatever the JSON value holds.
"""

from __future__ import annotations

from typing import Any

CHAT = "chat"
COMPLETION = "completion"
CLASSIFICATION = "classification"
FORMATS = (CHAT, COMPLETION, CLASSIFICATION)
ROLES = ("system", "user", "assistant")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``, ``string``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def detect_format(value: Any, text_field: str = "text") -> str | None:
    """The format an example looks like, from its keys; None when it matches none."""
    if not isinstance(value, dict):
        return None
    if "messages" in value:
        return CHAT
    if "prompt" in value or "completion" in value:
        return COMPLETION
    if text_field in value:
        return CLASSIFICATION
    return None


def example_problems(
    value: Any,
    fmt: str,
    text_field: str = "text",
    label_field: str = "label",
    num_labels: int = 2,
    text_pair_field: str | None = None,
) -> list[str]:
    """Everything wrong with one example of format ``fmt`` (empty when it can be used)."""
    if not isinstance(value, dict):
        return [f"expected a JSON object, got {json_type(value)}"]
    if fmt == CHAT:
        return _chat_problems(value)
    if fmt == COMPLETION:
        return _completion_problems(value)
    if fmt == CLASSIFICATION:
        return _classification_problems(value, text_field, label_field, num_labels, text_pair_field)
    raise ValueError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")


def unknown_format_message(text_field: str = "text") -> str:
    """What to say about an example that matches no format."""
    return (
        "cannot tell the format: expected 'messages' (chat), 'prompt' + 'completion' (completion) "
        f"or '{text_field}' + label (classification)"
    )


def _chat_problems(value: dict[str, Any]) -> list[str]:
    if "messages" not in value:
        return ["field 'messages' is missing (chat format)"]
    messages = value["messages"]
    if not isinstance(messages, list):
        return [f"field 'messages' must be an array of {{role, content}} objects, got {json_type(messages)}"]
    if not messages:
        return ["field 'messages' is empty"]
    problems: list[str] = []
    for position, message in enumerate(messages, start=1):
        problems.extend(f"message {position}: {p}" for p in _message_problems(message))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("no assistant turn, so nothing to train on")
    elif isinstance(messages[0], dict) and messages[0].get("role") == "assistant":
        problems.append("the conversation starts with an assistant turn; put a user turn before it")
    return problems


def _message_problems(message: Any) -> list[str]:
    if not isinstance(message, dict):
        return [f"expected an object with 'role' and 'content', got {json_type(message)}"]
    problems: list[str] = []
    role = message.get("role")
    if "role" not in message:
        problems.append("field 'role' is missing")
    elif not isinstance(role, str) or role not in ROLES:
        shown = repr(role) if isinstance(role, str) else json_type(role)
        problems.append(f"unknown role {shown} (expected {', '.join(ROLES)})")
    problems.extend(_text_problems(message, "content"))
    return problems


def _completion_problems(value: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "prompt" not in value:
        problems.append("field 'prompt' is missing (completion format)")
    elif not isinstance(value["prompt"], str):
        problems.append(f"field 'prompt' must be a string, got {json_type(value['prompt'])}")
    elif _has_unpaired_surrogate(value["prompt"]):
        problems.append("field 'prompt' is not valid Unicode (unpaired surrogate)")
    problems.extend(_text_problems(value, "completion"))
    return problems


def _classification_problems(
    value: dict[str, Any], text_field: str, label_field: str, num_labels: int, text_pair_field: str | None
) -> list[str]:
    problems = _text_problems(value, text_field)
    if text_pair_field is not None:
        problems.extend(_text_problems(value, text_pair_field))
    label = value.get(label_field)
    if label_field not in value:
        problems.append(f"field '{label_field}' is missing (classification format)")
    elif isinstance(label, bool) or not isinstance(label, int):
        problems.append(f"field '{label_field}' must be an integer class id, got {json_type(label)}")
    elif not 0 <= label < num_labels:
        problems.append(
            f"field '{label_field}' is {label}, outside 0..{num_labels - 1} (num_labels={num_labels})"
        )
    return problems


def _text_problems(value: dict[str, Any], name: str) -> list[str]:
    if name not in value:
        return [f"field '{name}' is missing"]
    text = value[name]
    if not isinstance(text, str):
        return [f"field '{name}' must be a string, got {json_type(text)}"]
    if not text.strip():
        return [f"field '{name}' is empty"]
    if _has_unpaired_surrogate(text):
        return [f"field '{name}' is not valid Unicode (unpaired surrogate)"]
    return []


def _has_unpaired_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
