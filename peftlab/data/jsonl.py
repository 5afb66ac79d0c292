"""Read JSONL files line by line without ever raising on bad content: every bad line becomes a ``Problem``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.data.problems import Problem

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Line:
    """One parsed JSON value and the 1-based line it came from."""

    number: int
    value: Any


def read_jsonl(path: str | Path) -> tuple[list[Line], list[Problem]]:
    """Parse every non-blank line of ``path`` as JSON.

    Returns the parsed lines and one ``Problem`` per line that is not UTF-8 or not JSON (and one for an
    unreadable or empty file). Arbitrary bytes never raise.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return [], [Problem(source, 0, f"cannot read the file ({error.strerror or error})")]
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    lines: list[Line] = []
    problems: list[Problem] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        value, problem = _parse_line(raw)
        if problem is not None:
            problems.append(Problem(source, number, problem))
        else:
            lines.append(Line(number, value))
    if not lines and not problems:
        problems.append(Problem(source, 0, "the file holds no examples (it is empty or blank)"))
    return lines, problems


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    if b"\x00" in raw:  # JSON text never holds NUL bytes; UTF-16 / UTF-32 text is full of them
        column = raw.index(b"\x00") + 1
        return None, f"not valid UTF-8 (NUL byte at column {column}: UTF-16/32?); save the file as UTF-8"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        return (
            None,
            f"not valid UTF-8 (byte 0x{byte:02x} at column {error.start + 1}); save the file as UTF-8",
        )
    if "\x00" in text:  # never valid in JSON text; the tell-tale of UTF-16 / UTF-32
        return None, "not JSON: the line holds NUL bytes, so the file is probably UTF-16 or UTF-32; save it as UTF-8"
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "not JSON (nested too deeply to parse)"
    except ValueError as error:  # json.JSONDecodeError, and over-long integer literals
        return None, f"not JSON ({error})"
