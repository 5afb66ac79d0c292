"""Validate and tokenise a whole data source: ``peftlab data check`` and training's data loading.

Every example is checked (format, fields, length after tokenisation); every problem is collected with
its line, none stops the scan. Training refuses a source with errors and lists them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from peftlab.data.encode import (
    ClassificationExample,
    EncodingError,
    Example,
    check_pair_template,
    check_truncation_side,
    encode_example,
    fit_to_length,
)
from peftlab.data.jsonl import Line, read_jsonl
from peftlab.data.problems import ERROR, WARNING, Problem, errors_in
from peftlab.data.records import (
    CLASSIFICATION,
    FORMATS,
    detect_format,
    example_problems,
    unknown_format_message,
)

AUTO = "auto"


@dataclass
class DataOptions:
    """How examples are read and tokenised (the ``data`` section of a run config, minus the sources)."""

    format: str = AUTO
    max_length: int = 256
    truncation: bool = False
    truncation_side: str = "right"
    text_field: str = "text"
    label_field: str = "label"
    num_labels: int = 2
    text_pair_field: str | None = None  # the second text of a sentence-pair classification example

    def __post_init__(self) -> None:
        if self.format not in (AUTO, *FORMATS):
            raise ValueError(f"data.format is {self.format!r}; choose one of {AUTO}, {', '.join(FORMATS)}")
        check_truncation_side(self.truncation_side)
        if self.truncation_side == "left" and self.format == CLASSIFICATION:
            raise ValueError(
                "data.truncation_side=left keeps the end of chat and completion examples; "
                "classification examples are cut on the right (set it back to right)"
            )
        if self.max_length < 2:
            raise ValueError(f"data.max_length is {self.max_length}; it must be at least 2")
        if self.text_pair_field is not None and self.format not in (AUTO, CLASSIFICATION):
            raise ValueError(
                f"data.text_pair_field names a second text of classification examples; "
                f"data.format is {self.format!r} (unset text_pair_field or use classification)"
            )
        if self.text_pair_field is not None and self.text_pair_field == self.text_field:
            raise ValueError(
                f"data.text_pair_field and data.text_field are both {self.text_field!r}; "
                "name the two texts of a pair by different fields"
            )


@dataclass
class CheckReport:
    """The usable examples of one source, the problems found, and the figures ``data check`` prints."""

    source: str
    format: str | None
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    max_length: int = 0

    @property
    def errors(self) -> list[Problem]:
        """The problems that make the source unusable for training."""
        return errors_in(self.problems)

    @property
    def ok(self) -> bool:
        """True when the source has no errors (warnings allowed)."""
        return not self.errors

    def num_tokens(self) -> int:
        """Tokens in all usable examples: what one epoch feeds the model, before padding."""
        return sum(len(e.input_ids) for e in self.examples)

    def num_trained_tokens(self) -> int:
        """Tokens the loss is taken on per epoch (one per example for classification)."""
        return sum(
            1 if isinstance(e, ClassificationExample) else e.num_trained_tokens() for e in self.examples
        )

    def summary(self) -> str:
        """Figures for a person: examples, problems, tokens, longest example, tokens per epoch."""
        warnings = len(self.problems) - len(self.errors)
        longest = max((len(e.input_ids) for e in self.examples), default=0)
        return "\n".join(
            [
                f"{self.source}: {len(self.examples)} usable examples ({self.format or 'unknown format'}), "
                f"{len(self.errors)} error(s), {warnings} warning(s)",
                f"  tokens: {self.num_tokens():,} ({self.num_trained_tokens():,} trained); "
                f"longest example: {longest:,} tokens (max_length {self.max_length:,})",
                f"  estimated tokens per epoch: {self.num_tokens():,} before padding",
            ]
        )

    def render(self) -> str:
        """Every problem as ``FILE:LINE: problem``, then the summary."""
        return "\n".join([*(str(p) for p in self.problems), self.summary()])


def check_file(
    path: str | Path, tokenizer: PreTrainedTokenizerBase, options: DataOptions | None = None
) -> CheckReport:
    """Read, validate and tokenise a JSONL file; never raises on the file's contents."""
    options = options or DataOptions()
    lines, read_problems = read_jsonl(path)
    report = check_lines(lines, str(path), tokenizer, options)
    report.problems = sorted([*read_problems, *report.problems], key=lambda p: p.line)
    return report


def check_lines(
    lines: Iterable[Line], source: str, tokenizer: PreTrainedTokenizerBase, options: DataOptions
) -> CheckReport:
    """Validate and tokenise parsed examples (``Line`` = line number + JSON value) from ``source``."""
    if options.text_pair_field is not None:
        check_pair_template(tokenizer)
    lines = list(lines)
    fmt, decided_by = _resolve_format(lines, options)
    report = CheckReport(source, fmt, max_length=options.max_length)
    for line in lines:
        for message, severity in _line_problems(line, fmt, decided_by, tokenizer, options, report):
            report.problems.append(Problem(source, line.number, message, severity))
    return report


def _resolve_format(lines: list[Line], options: DataOptions) -> tuple[str | None, int]:
    if options.format != AUTO:
        return options.format, 0
    for line in lines:
        fmt = detect_format(line.value, options.text_field)
        if fmt is not None:
            return fmt, line.number
    return None, 0


def _line_problems(
    line: Line,
    fmt: str | None,
    decided_by: int,
    tokenizer: PreTrainedTokenizerBase,
    options: DataOptions,
    report: CheckReport,
) -> list[tuple[str, str]]:
    if fmt is None:
        return [(unknown_format_message(options.text_field), ERROR)]
    looks_like = detect_format(line.value, options.text_field)
    if looks_like is not None and looks_like != fmt:
        origin = f" (decided by line {decided_by})" if decided_by else ""
        return [(f"a {looks_like} example in a {fmt} file{origin}", ERROR)]
    messages = example_problems(
        line.value, fmt, options.text_field, options.label_field, options.num_labels, options.text_pair_field
    )
    if messages:
        return [(m, ERROR) for m in messages]
    try:
        example = encode_example(
            line.value,
            fmt,
            tokenizer,
            text_field=options.text_field,
            label_field=options.label_field,
            text_pair_field=options.text_pair_field,
        )
    except EncodingError as error:
        return [(str(error), ERROR)]
    fitted, note = fit_to_length(example, options.max_length, options.truncation, options.truncation_side)
    if fitted is None:
        return [(note or "unusable", ERROR)]
    report.examples.append(fitted)
    return [(note, WARNING)] if note else []
