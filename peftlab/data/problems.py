"""Problems found in input data, reported as ``FILE:LINE: problem``, and the error that lists them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One problem: where (``source``, 1-based ``line``; 0 for the whole source) and what is wrong."""

    source: str
    line: int
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        prefix = "" if self.severity == ERROR else f"{self.severity}: "
        where = f"{self.source}:{self.line}" if self.line > 0 else self.source
        return f"{where}: {prefix}{self.message}"


class DataError(ValueError):
    """Training data that cannot be used; the message lists every problem, one per line."""

    def __init__(self, problems: Sequence[Problem], summary: str = "") -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == ERROR]
        head = (
            summary
            or f"{len(errors)} problem(s) in the training data; fix them (or run `peftlab data check`)"
        )
        super().__init__("\n".join([head, *(str(p) for p in errors)]))


def errors_in(problems: Sequence[Problem]) -> list[Problem]:
    """The problems that stop training (warnings excluded)."""
    return [p for p in problems if p.severity == ERROR]
