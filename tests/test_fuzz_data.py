"""Fuzzed training data: arbitrary bytes, wrong encodings, huge lines, wrong types and missing fields.

Whatever a JSONL file holds, the reader, ``check_file`` and ``peftlab data check`` never raise: every
non-blank line is either a usable example or reported as ``FILE:LINE: problem`` (``FILE: problem`` only
for the whole file), and the CLI prints nothing else and exits 0 or 1.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftlab.cli import main
from peftlab.data import DataOptions, check_file
from peftlab.data.jsonl import read_jsonl
from peftlab.tokenization import build_byte_tokenizer

TOKENIZER = build_byte_tokenizer()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SUMMARY_LINE = re.compile(r"^(  tokens: |  estimated tokens per epoch: )")

VALID_EXAMPLES: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]},
    "completion": {"prompt": "2 + 2 =", "completion": " 4"},
    "classification": {"text": "a fine film", "label": 1},
    "sentence_pair": {"premise": "a cat sleeps", "hypothesis": "an animal rests", "label": 1},
}
# (path into the example, field name) of each required field, per format
REQUIRED_FIELDS: dict[str, list[tuple[tuple[Any, ...], str]]] = {
    "chat": [(("messages",), "messages"), (("messages", 0, "role"), "role"), (("messages", 1, "content"), "content")],
    "completion": [(("prompt",), "prompt"), (("completion",), "completion")],
    "classification": [(("text",), "text"), (("label",), "label")],
    "sentence_pair": [(("premise",), "premise"), (("hypothesis",), "hypothesis"), (("label",), "label")],
}
# the data options each kind of example is checked with
OPTIONS: dict[str, dict[str, Any]] = {
    "chat": {"format": "chat"},
    "completion": {"format": "completion"},
    "classification": {"format": "classification"},
    "sentence_pair": {"format": "classification", "text_field": "premise", "text_pair_field": "hypothesis"},
}
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def line_is_json(raw: bytes) -> bool:
    """Independent oracle: a line is usable JSON when it is UTF-8 and ``json.loads`` accepts it."""
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def non_blank_lines(data: bytes) -> dict[int, bytes]:
    """The 1-based non-blank lines of a file's bytes (BOM and CR handled as the reader documents)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = {number: raw.rstrip(b"\r") for number, raw in enumerate(data.split(b"\n"), start=1)}
    return {number: raw for number, raw in lines.items() if raw.strip()}


def assert_every_line_accounted_for(report: Any, path: Path, lines: dict[int, bytes]) -> None:
    """Each non-blank line is exactly one of: a usable example, or a line with ``FILE:LINE:`` errors."""
    error_lines = {p.line for p in report.errors}
    assert error_lines <= set(lines) | {0}
    assert len(report.examples) + len(error_lines - {0}) == len(lines)
    for problem in report.problems:
        where = f"{path}:{problem.line}: " if problem.line else f"{path}: "
        assert str(problem).startswith(where)


# --- the reader ------------------------------------------------------------------------------------

LINE_PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b'{"prompt": "a", "completion": "b"}', b"[1, 2", b"\xff\xfe{}", b"null", b"  ", b"\r", b"\xef\xbb\xbf{}"]),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
)


@FUZZ
@given(pieces=st.lists(LINE_PIECES, max_size=8), bom=st.booleans(), crlf=st.booleans())
def test_reader_accounts_for_every_line_of_arbitrary_bytes(tmp_path: Path, pieces: list[bytes], bom: bool, crlf: bool) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + (b"\r\n" if crlf else b"\n").join(pieces)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    parsed, problems = read_jsonl(path)
    lines = non_blank_lines(data)
    assert [line.number for line in parsed] == [n for n, raw in lines.items() if line_is_json(raw)]
    assert sorted(p.line for p in problems) == ([0] if not lines else [n for n, raw in lines.items() if not line_is_json(raw)])
    for problem in problems:
        assert problem.message.startswith(("not valid UTF-8", "not JSON", "the file holds no examples"))


# --- wrong types and missing fields -----------------------------------------------------------------


def _set_at(value: Any, path: tuple[Any, ...], replacement: Any) -> Any:
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = replacement
    return value


def _delete_at(value: Any, path: tuple[Any, ...]) -> Any:
    target = value
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return value


@st.composite
def mutated_example(draw: st.DrawFn, fmt: str) -> tuple[dict[str, Any] | Any, str | None]:
    """A valid example of ``fmt`` with one mutation; returns it and the field the error must name (None: still valid)."""
    example = copy.deepcopy(VALID_EXAMPLES[fmt])
    kind = draw(st.sampled_from(["keep", "extra_key", "drop", "wrong_type", "not_object"]))
    if kind == "keep":
        return example, None
    if kind == "extra_key":
        example[draw(st.sampled_from(["id", "source", "meta"]))] = draw(JSON_VALUES)
        return example, None
    if kind == "not_object":
        return draw(st.lists(JSON_SCALARS, max_size=3) | JSON_SCALARS), "expected a JSON object"
    path, name = draw(st.sampled_from(REQUIRED_FIELDS[fmt]))
    if kind == "drop":
        return _delete_at(example, path), f"field '{name}' is missing"
    wrong = draw(JSON_VALUES.filter(lambda v: not isinstance(v, str if name != "label" else int) or isinstance(v, bool)))
    if name == "messages" and isinstance(wrong, list):
        wrong = {"not": "a list"}
    # a role of the wrong type is reported as an unknown role; every other field by name
    return _set_at(example, path, wrong), "unknown role" if name == "role" else f"field '{name}'"


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(VALID_EXAMPLES)))
def test_mutated_examples_are_used_or_reported_on_their_line(tmp_path: Path, data: st.DataObject, fmt: str) -> None:
    examples = data.draw(st.lists(mutated_example(fmt), min_size=1, max_size=6))
    path = tmp_path / "mutated.jsonl"
    path.write_text("\n".join(json.dumps(value) for value, _ in examples) + "\n", encoding="utf-8")
    report = check_file(path, TOKENIZER, DataOptions(**OPTIONS[fmt], max_length=256))
    lines = {number: b"x" for number in range(1, len(examples) + 1)}
    assert_every_line_accounted_for(report, path, lines)
    errors = {p.line: str(p) for p in report.errors}
    for number, (_, expected) in enumerate(examples, start=1):
        if expected is None:
            assert number not in errors, errors[number]
        else:
            assert number in errors and expected in errors[number], (expected, errors.get(number))
    assert len(report.examples) == sum(expected is None for _, expected in examples)


# --- wrong encodings and huge lines ------------------------------------------------------------------


# ASCII text is the same bytes in latin-1, cp1252 and UTF-8, so those two are tried with accents only.
ENCODINGS = [(e, False) for e in ("utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252")]
ENCODINGS += [(e, True) for e in ("utf-16", "utf-16-le", "utf-32-be")]


@pytest.mark.parametrize(("encoding", "ascii_only"), ENCODINGS)
def test_files_in_other_encodings_are_reported_per_line_as_not_utf8(tmp_path: Path, encoding: str, ascii_only: bool) -> None:
    prompt, completion = ("Where is cafe {}?", " Over there.") if ascii_only else ("Où est le café n°{}?", " Là-bas.")
    text = "\n".join(
        json.dumps({"prompt": prompt.format(i), "completion": completion}, ensure_ascii=False) for i in range(3)
    ) + "\n"
    path = tmp_path / f"{encoding}.jsonl"
    path.write_bytes(text.encode(encoding))
    report = check_file(path, TOKENIZER, DataOptions(max_length=256))
    assert not report.ok and not report.examples
    lines = [p.line for p in report.errors]
    assert lines[:3] == [1, 2, 3] and set(lines) <= {1, 2, 3, 4}  # a UTF-16/32 newline leaves NUL bytes on line 4
    for problem in report.errors:
        assert str(problem).startswith(f"{path}:{problem.line}: ")
        assert "UTF-8" in problem.message, problem.message


def test_huge_and_pathological_lines_are_reported_not_crashed(tmp_path: Path) -> None:
    lines = [
        b"{" * 200_000,  # nesting too deep for any parser
        b'{"prompt": "' + b"x" * 4_000_000,  # 4 MB, unterminated
        json.dumps({"prompt": "p", "completion": "y" * 100_000}).encode(),  # valid, but far over max_length
        json.dumps({"prompt": "p", "completion": list(range(200_000))}).encode(),  # a huge value of the wrong type
        b'{"prompt": "p", "completion": "c", "n": ' + b"9" * 20_000 + b"}",  # an integer literal too long to read
        b"[" * 50_000 + b"]" * 50_000,  # deep but balanced
    ]
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = check_file(path, TOKENIZER, DataOptions(format="completion", max_length=256))
    assert_every_line_accounted_for(report, path, non_blank_lines(path.read_bytes()))
    messages = {p.line: p.message for p in report.errors}
    assert sorted(messages) == [1, 2, 3, 4, 5, 6]
    assert "nested too deeply" in messages[1] or "not JSON" in messages[1]
    assert messages[2].startswith("not JSON")
    assert "over max_length 256" in messages[3]
    assert "field 'completion' must be a string, got array" in messages[4]
    assert messages[5].startswith("not JSON")
    assert "nested too deeply" in messages[6]
    assert len(report.render()) < 20_000  # problems quote positions, not the huge lines themselves


# --- the `peftlab data check` command ----------------------------------------------------------------


@FUZZ
@given(content=st.lists(LINE_PIECES, max_size=6).map(b"\n".join), fmt=st.sampled_from(["auto", "chat", "completion"]))
def test_data_check_command_prints_only_file_line_problems_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, fmt: str
) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(content)
    status = main(["data", "check", str(path), "--format", fmt, "--max-length", "64"])
    captured = capsys.readouterr()
    assert status in (0, 1) and captured.err == ""
    for line in captured.out.splitlines():
        assert line.startswith(f"{path}:") or SUMMARY_LINE.match(line), line
    problems = captured.out.splitlines()[:-3]  # the last three lines are the summary
    assert (status == 1) == any(": warning: " not in line for line in problems)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-length", "0"], "data.max_length is 0; it must be at least 2"),
        (["--format", "chat", "--max-length", "-3"], "data.max_length is -3"),
    ],
)
def test_data_check_command_refuses_bad_options_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(VALID_EXAMPLES["completion"]) + "\n", encoding="utf-8")
    assert main(["data", "check", str(path), *arguments]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and message in captured.err
    assert "Traceback" not in captured.err


def test_data_check_command_reports_missing_files_and_folders_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for target in (tmp_path / "missing.jsonl", tmp_path):
        assert main(["data", "check", str(target)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"{target}: cannot read the file")


def test_data_check_command_in_a_fresh_process_prints_no_traceback(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n\xff\xfe\x00garbage\n{"prompt": 3}\n')
    result = subprocess.run([sys.executable, "-m", "peftlab.cli", "data", "check", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{path}:2: not valid UTF-8" in result.stdout and f"{path}:3: field 'prompt' must be a string" in result.stdout
