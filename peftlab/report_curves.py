"""Validation figures during training, per report group: accuracy and loss against the step.

A run evaluates every ``train.eval_every`` steps and at its last step; each such event in its
``events.jsonl`` carries ``valid_loss`` and ``valid_accuracy`` (classification) or
``valid_mean_token_accuracy`` (language modelling). ``peftlab report`` averages them over the seeds of
each group, at the steps every finished run of the group evaluated, and shows them as a table (one row
per evaluation step) and ``valid_curves.png`` when some group evaluated more than once: how accuracy
grows with the training budget, method by method.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.logging import EVENTS_FILE, is_finite_number, is_step, read_events
from peftlab.plotting import decorate_axes, pyplot, save_figure
from peftlab.report import CURVES_PLOT, GroupSummary, format_mean_std, markdown_table

VALID_LOSS_KEY = "valid_loss"
VALID_ACCURACY_KEYS = ("valid_accuracy", "valid_mean_token_accuracy")  # classification first
TABLE_DIGITS = 4


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of one run: the step it followed and what it measured."""

    step: int
    epoch: float | None
    loss: float | None
    accuracy: float | None
    accuracy_key: str | None


@dataclass
class CurveSummary:
    """A group's evaluations averaged over its finished runs, at the steps all of them evaluated."""

    label: str
    runs: int
    accuracy_key: str | None
    steps: list[int]
    epochs: list[float | None]
    accuracy_mean: list[float | None]
    accuracy_std: list[float | None]
    loss_mean: list[float | None]
    loss_std: list[float | None]


def read_eval_points(events_path: Path) -> list[EvalPoint]:
    """The evaluation events of one ``events.jsonl`` in step order (empty when there is no file)."""
    if not events_path.is_file():
        return []
    points = []
    for event in read_events(events_path):
        if not isinstance(event, dict) or not is_step(event.get("step")):
            continue
        key = next((name for name in VALID_ACCURACY_KEYS if is_finite_number(event.get(name))), None)
        loss = event.get(VALID_LOSS_KEY)
        if key is None and not is_finite_number(loss):
            continue
        epoch = event.get("epoch")
        points.append(
            EvalPoint(
                step=event["step"],
                epoch=float(epoch) if is_finite_number(epoch) else None,
                loss=float(loss) if is_finite_number(loss) else None,
                accuracy=float(event[key]) if key else None,
                accuracy_key=key,
            )
        )
    return sorted(points, key=lambda point: point.step)


def summarize_curves(groups: Sequence[GroupSummary]) -> list[CurveSummary]:
    """Mean and sample std over each group's finished runs, at the steps every one of them evaluated."""
    curves = []
    for group in groups:
        per_run = [read_eval_points(run.run_dir / EVENTS_FILE) for run in group.finished]
        per_run = [points for points in per_run if points]
        if not per_run:
            continue
        by_step = [{point.step: point for point in points} for points in per_run]
        shared = sorted(set.intersection(*(set(points) for points in by_step)))
        accuracy = [_mean_std([points[step].accuracy for points in by_step]) for step in shared]
        loss = [_mean_std([points[step].loss for points in by_step]) for step in shared]
        first = by_step[0]
        curves.append(
            CurveSummary(
                label=group.label,
                runs=len(per_run),
                accuracy_key=next((p.accuracy_key for p in per_run[0] if p.accuracy_key), None),
                steps=shared,
                epochs=[first[step].epoch for step in shared],
                accuracy_mean=[mean for mean, _ in accuracy],
                accuracy_std=[std for _, std in accuracy],
                loss_mean=[mean for mean, _ in loss],
                loss_std=[std for _, std in loss],
            )
        )
    return curves


def has_intermediate_evaluations(curves: Sequence[CurveSummary]) -> bool:
    """True when some group evaluated at more than one step (a curve, not just the final figure)."""
    return any(len(curve.steps) >= 2 for curve in curves)


def render_curve_section(curves: Sequence[CurveSummary]) -> list[str]:
    """Markdown lines: one table per measure, a row per evaluation step and a column per group."""
    steps = sorted({step for curve in curves for step in curve.steps})
    epochs = {step: epoch for curve in curves for step, epoch in zip(curve.steps, curve.epochs, strict=True)}
    lines = [
        "## Validation during training",
        "",
        "Mean ± sample std over each group's finished runs, at the steps all of them evaluated",
        "(`train.eval_every`, and the last step); `–` where a group did not evaluate at that step.",
    ]
    measures = (
        ("accuracy", lambda c: c.accuracy_mean, lambda c: c.accuracy_std),
        ("loss", lambda c: c.loss_mean, lambda c: c.loss_std),
    )
    for name, means, stds in measures:
        keys = sorted({curve.accuracy_key for curve in curves if curve.accuracy_key}) if name == "accuracy" else []
        title = f"valid {name}" + (f" (`{'`, `'.join(keys)}`)" if keys else "")
        header = ["step", "epoch", *(f"{curve.label} ({curve.runs} runs)" for curve in curves)]
        rows = []
        for step in steps:
            epoch = epochs.get(step)
            row = [str(step), "–" if epoch is None else f"{epoch:.2f}"]
            for curve in curves:
                index = curve.steps.index(step) if step in curve.steps else None
                mean = means(curve)[index] if index is not None else None
                std = stds(curve)[index] if index is not None else None
                row.append(format_mean_std(mean, std, TABLE_DIGITS))
            rows.append(row)
        lines += ["", f"### {title}", "", *markdown_table(header, rows)]
    lines += ["", f"![validation curves]({CURVES_PLOT})"]
    return lines


def plot_valid_curves(curves: Sequence[CurveSummary], path: Path, colours: dict[str, str]) -> Path:
    """Validation accuracy and loss against the step, one line (± std band) per group."""
    plt = pyplot()
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11.0, 4.6))
    for curve in curves:
        colour = colours.get(curve.label)
        _plot_band(accuracy_axes, curve.steps, curve.accuracy_mean, curve.accuracy_std, colour, curve.label)
        _plot_band(loss_axes, curve.steps, curve.loss_mean, curve.loss_std, colour, curve.label)
    for axes, name in ((accuracy_axes, "valid accuracy"), (loss_axes, "valid loss")):
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("step")
        axes.set_ylabel(name)
        axes.set_title(f"{name.capitalize()} during training")
    decorate_axes(accuracy_axes)
    decorate_axes(loss_axes)
    save_figure(figure, path)
    return path


def _plot_band(
    axes: Any,
    steps: list[int],
    means: list[float | None],
    stds: list[float | None],
    colour: str | None,
    label: str,
) -> None:
    points = [(s, m, d or 0.0) for s, m, d in zip(steps, means, stds, strict=True) if m is not None]
    if not points:
        return
    x = [point[0] for point in points]
    y = [point[1] for point in points]
    spread = [point[2] for point in points]
    axes.plot(x, y, marker="o", markersize=3, color=colour, label=label)
    if any(spread):
        low = [value - sd for value, sd in zip(y, spread, strict=True)]
        high = [value + sd for value, sd in zip(y, spread, strict=True)]
        axes.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [value for value in values if value is not None]
    if len(present) != len(values) or not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) >= 2 else None
