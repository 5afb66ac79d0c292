"""The report's environment section: which library versions, thread counts, devices and commits made the runs.

Each ``result.json`` records its ``system`` (``peftlab.hydra_app``). Runs of one sweep can come from
different processes: another torch thread count, library version, device or commit changes the
floating-point rounding, and a seed-sensitive method then scores differently seed for seed. The section
lists every environment with the runs it made, warns when the versions, threads or devices differ, and
notes when the commits do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftlab.report import RunResult

HEADER = ("torch", "transformers", "torch threads", "device", "commit")
UNKNOWN = "?"


def environment_of(system: dict[str, Any] | None) -> tuple[str, ...]:
    """The environment a run's ``system`` record describes, one string per ``HEADER`` column."""
    if not system:
        return (UNKNOWN,) * len(HEADER)
    source = system.get("source") if isinstance(system.get("source"), dict) else {}
    commit = str(source.get("commit") or UNKNOWN)[:7]
    if source.get("dirty"):
        commit += " (uncommitted changes)"
    device = system.get("gpu_name") or ("CPU" if system.get("cuda_available") is False else UNKNOWN)
    return (
        str(system.get("torch", UNKNOWN)),
        str(system.get("transformers", UNKNOWN)),
        str(system.get("torch_threads", UNKNOWN)),
        str(device),
        commit,
    )


def render_environment_section(runs: Sequence[RunResult]) -> list[str]:
    """Markdown lines: one row per environment with its runs, and a warning when the runs differ."""
    by_environment: dict[tuple[str, ...], list[RunResult]] = {}
    for run in runs:
        if run.ok:
            by_environment.setdefault(environment_of(run.system), []).append(run)
    if not by_environment:
        return []
    lines = [
        "## Environment",
        "",
        "| " + " | ".join(HEADER) + " | runs |",
        "|" + "---|" * (len(HEADER) + 1),
    ]
    for environment, members in sorted(by_environment.items()):
        labels: dict[str, int] = {}
        for run in members:
            labels[run.label] = labels.get(run.label, 0) + 1
        made = "; ".join(f"{label} ×{count}" for label, count in labels.items())
        lines.append("| " + " | ".join(environment) + f" | {len(members)}: {made.replace('|', '/')} |")
    numerics = {environment[:-1] for environment in by_environment}  # all but the commit
    commits = {environment[-1] for environment in by_environment}
    if len(numerics) > 1:
        lines += [
            "",
            f"**These runs come from {len(numerics)} environments.** A different thread count, library "
            "version or device changes the rounding, so a seed-sensitive method can score differently "
            "seed for seed: compare runs made in one environment, or rerun the others in it.",
        ]
    if len(commits) > 1:
        lines += [
            "",
            f"The runs were made at {len(commits)} commits: a change of the code between them may change "
            "what they compute.",
        ]
    return lines
