"""`data check` and data loading: every planted error reported with its line; never a crash on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftlab.cli import main
from peftlab.data import DataError, DataOptions, check_file, load_data
from peftlab.run_config import DataConfig
from peftlab.tokenization import build_byte_tokenizer

TOKENIZER = build_byte_tokenizer()


def chat(user: str = "Hi", answer: str = "Hello") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


# line number -> (raw line, a fragment the report must contain for that line)
PLANTED: dict[int, tuple[bytes, str]] = {
    2: (b'{"messages": [ broken', "not JSON"),
    3: (
        json.dumps({"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}).encode(),
        "field 'role' is missing",
    ),
    4: (
        json.dumps(
            {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}
        ).encode(),
        "unknown role 'robot'",
    ),
    5: (
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}
        ).encode(),
        "field 'content' is empty",
    ),
    6: (
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}).encode(),
        "no assistant turn",
    ),
    7: (json.dumps(chat("long", "x" * 400)).encode(), "over max_length 128"),
    8: (b"\xff\xfe not utf-8 \x80", "not valid UTF-8"),
    9: (json.dumps({"messages": "not a list"}).encode(), "must be an array"),
    10: (
        json.dumps(
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}
        ).encode(),
        "must be a string, got number",
    ),
    11: (json.dumps({"prompt": "p", "completion": "c"}).encode(), "a completion example in a chat file"),
    12: (b"[1, 2, 3]", "expected a JSON object, got array"),
    14: (
        json.dumps({"messages": [{"role": "assistant", "content": "first"}]}).encode(),
        "starts with an assistant turn",
    ),
}


@pytest.fixture()
def planted_file(tmp_path: Path) -> Path:
    lines = {1: json.dumps(chat()).encode(), 13: json.dumps(chat("Fine?", "Fine.")).encode()}
    lines.update({number: raw for number, (raw, _) in PLANTED.items()})
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines[n] for n in range(1, max(lines) + 1)) + b"\n")
    return path


def test_check_reports_every_planted_error_with_its_line(planted_file: Path) -> None:
    report = check_file(planted_file, TOKENIZER, DataOptions(max_length=128))
    by_line = {p.line: str(p) for p in report.errors}
    assert set(by_line) == set(PLANTED)
    for number, (_, fragment) in PLANTED.items():
        assert by_line[number].startswith(f"{planted_file}:{number}: ")
        assert fragment in by_line[number]
    assert len(report.examples) == 2 and not report.ok


def test_cli_data_check_prints_file_line_problems_and_exits_nonzero(planted_file: Path, capsys) -> None:
    status = main(["data", "check", str(planted_file), "--max-length", "128"])
    out = capsys.readouterr().out
    assert status != 0
    for number in PLANTED:
        assert f"{planted_file}:{number}: " in out
    assert "2 usable examples (chat), 12 error(s)" in out
    assert "estimated tokens per epoch" in out


def test_cli_data_check_passes_a_clean_file_with_a_summary(tmp_path: Path, capsys) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(json.dumps(chat(f"q{i}", f"a{i}")) for i in range(3)) + "\n", encoding="utf-8")
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 usable examples (chat), 0 error(s)" in out
    # by hand: <|bos|> <|user|> \n q i <|end|> \n <|assistant|> \n a i <|end|> \n = 13 tokens,
    # of which 4 are trained (a i <|end|> \n)
    assert "tokens: 39 (12 trained)" in out


def test_shipped_examples_are_clean() -> None:
    for name in ("style_train.jsonl", "style_valid.jsonl"):
        path = Path(__file__).resolve().parents[1] / "peftlab" / "data" / "examples" / name
        report = check_file(path, TOKENIZER)
        assert report.ok, report.render()
        assert len(report.examples) >= 8


def test_truncation_turns_over_length_into_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(chat("q", "y" * 300)) + "\n", encoding="utf-8")
    strict = check_file(path, TOKENIZER, DataOptions(max_length=64))
    lenient = check_file(path, TOKENIZER, DataOptions(max_length=64, truncation=True))
    assert not strict.ok
    assert lenient.ok and "warning: truncated" in str(lenient.problems[0])
    assert len(lenient.examples[0].input_ids) == 64


def test_left_truncation_keeps_every_completion_of_long_prompts(tmp_path: Path) -> None:
    path = tmp_path / "articles.jsonl"
    records = [{"prompt": "article " * 40 + f"number {i}\nTopic:", "completion": " sport"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    right = check_file(path, TOKENIZER, DataOptions(max_length=64, truncation=True))
    left = check_file(path, TOKENIZER, DataOptions(max_length=64, truncation=True, truncation_side="left"))
    assert len(right.errors) == 3 and "nothing is left to train on" in str(right.errors[0])
    assert left.ok and len(left.examples) == 3
    for example in left.examples:
        trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
        assert TOKENIZER.decode(trained).startswith(" sport")
        assert len(example.input_ids) == 64
    config = DataConfig(train_file=str(path), valid_file=None, max_length=64, truncation=True)
    config.truncation_side = "left"
    assert len(load_data(config, TOKENIZER).train.examples) == 3
    check = ["data", "check", str(path), "--max-length", "64", "--truncation"]
    assert main(check) == 1
    assert main([*check, "--truncation-side", "left"]) == 0


def test_left_truncation_is_refused_for_classification() -> None:
    with pytest.raises(ValueError, match="classification examples are cut on the right"):
        DataOptions(format="classification", truncation=True, truncation_side="left")
    with pytest.raises(ValueError, match="truncation_side is 'up'"):
        DataOptions(truncation_side="up")


def test_completion_and_classification_formats_are_detected(tmp_path: Path) -> None:
    completion = tmp_path / "completion.jsonl"
    completion.write_text(
        json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    report = check_file(completion, TOKENIZER)
    assert report.format == "completion"
    assert [p.line for p in report.errors] == [2] and "field 'completion' is missing" in report.errors[
        0
    ].message
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text(
        json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps({"text": "bad", "label": 7}) + "\n"
    )
    report = check_file(labelled, TOKENIZER, DataOptions(num_labels=2))
    assert report.format == "classification"
    assert [p.line for p in report.errors] == [2] and "outside 0..1" in report.errors[0].message


def test_training_data_with_errors_is_refused_naming_them_all(planted_file: Path, tmp_path: Path) -> None:
    valid = tmp_path / "valid.jsonl"
    valid.write_text(json.dumps(chat()) + "\n" + "{oops\n", encoding="utf-8")
    data = DataConfig(train_file=str(planted_file), valid_file=str(valid), max_length=128)
    with pytest.raises(DataError) as caught:
        load_data(data, TOKENIZER)
    message = str(caught.value)
    for number in PLANTED:
        assert f"{planted_file}:{number}: " in message
    assert f"{valid}:2: not JSON" in message


def test_missing_and_empty_files_are_reported(tmp_path: Path) -> None:
    missing = check_file(tmp_path / "nope.jsonl", TOKENIZER)
    assert not missing.ok and "cannot read the file" in str(missing.errors[0])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    assert "holds no examples" in str(check_file(empty, TOKENIZER).errors[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_check_never_raises_on_arbitrary_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(content)
    report = check_file(path, TOKENIZER, DataOptions(max_length=64))
    assert all(p.line >= 0 for p in report.problems)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["messages", "role", "content", "prompt", "completion", "text", "label", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(JSON_VALUES, min_size=1, max_size=4),
    fmt=st.sampled_from(["auto", "chat", "completion", "classification"]),
)
def test_check_never_raises_on_arbitrary_json(tmp_path: Path, values: list, fmt: str) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values) + "\n", encoding="utf-8")
    report = check_file(path, TOKENIZER, DataOptions(format=fmt, max_length=64))
    lines_with_errors = {p.line for p in report.errors}
    assert len(report.examples) + len(lines_with_errors) == len(values)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be", "latin-1"])
def test_files_in_other_encodings_are_reported_as_not_utf8(tmp_path: Path, encoding: str) -> None:
    text = "".join(json.dumps(chat(f"café n°{i}", "voilà"), ensure_ascii=False) + "\n" for i in range(2))
    path = tmp_path / "encoded.jsonl"
    path.write_bytes(text.encode(encoding))
    report = check_file(path, TOKENIZER)
    assert not report.examples and [p.line for p in report.errors][:2] == [1, 2]
    assert all(
        "not valid UTF-8" in p.message and "save the file as UTF-8" in p.message for p in report.errors
    )
