"""Where training events go: ``events.jsonl`` (always), a rich progress bar, and any extra sink.

An event is a flat dict for one optimiser step: ``step``, ``epoch``, ``train_loss``,
``train_mean_token_accuracy`` (``train_accuracy`` for classification), ``lr``, ``tokens_per_s``,
``grad_norm``, and at evaluation steps ``valid_loss`` and ``valid_mean_token_accuracy``
(``valid_accuracy``). A sink is anything with ``log(event)`` and ``close()``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from peftlab.atomic import write_text_atomic

EVENTS_FILE = "events.jsonl"


@runtime_checkable
class EventSink(Protocol):
    """Receives every training event; ``close`` is called once when the run ends (or fails)."""

    def log(self, event: dict[str, Any]) -> None:
        """Record one event."""

    def close(self) -> None:
        """Flush and release resources."""


class JsonlSink:
    """Appends each event as one JSON line to a file, flushed at once so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, event: dict[str, Any]) -> None:
        """Write ``event`` as one line (NaN and infinities become null, keeping the file valid JSON)."""
        self._file.write(json.dumps(_finite(event), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class ConsoleSink:
    """A rich progress bar over the optimiser steps with the latest loss, accuracy, lr and tokens/s."""

    def __init__(self, total_steps: int, start_step: int = 0, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, figures="")
        self.progress.start()

    def log(self, event: dict[str, Any]) -> None:
        """Advance the bar to ``event['step']``; print a line for each evaluation."""
        accuracy = event.get("train_mean_token_accuracy", event.get("train_accuracy"))
        figures = (
            f"loss {_fmt(event.get('train_loss'))} acc {_fmt(accuracy)} lr {_fmt(event.get('lr'), '.2e')}"
        )
        figures += f" {_fmt(event.get('tokens_per_s'), '.0f')} tok/s"
        self.progress.update(self.task, completed=event.get("step", 0), figures=figures)
        if "valid_loss" in event:
            valid_accuracy = event.get("valid_mean_token_accuracy", event.get("valid_accuracy"))
            self.progress.console.print(
                f"step {event.get('step')}: valid_loss {_fmt(event['valid_loss'])} "
                f"valid_acc {_fmt(valid_accuracy)}"
            )

    def close(self) -> None:
        """Stop the live display."""
        self.progress.stop()


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is finite: a figure that can be logged or averaged."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_step(value: Any) -> bool:
    """True for an event's ``step``: an int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl`` file (an unreadable line raises ``ValueError`` naming it)."""
    events = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
    return events


def rewind_events(path: str | Path, step: int) -> None:
    """Keep only the events up to ``step`` (a resumed run replays the steps after its checkpoint).

    A torn last line (a crash mid-write) is dropped too. The file is replaced atomically.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("step"), int) and event["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _finite(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
