"""Sweep folder -> comparison table (markdown + CSV) and plots (PNG).

``peftlab report SWEEP_DIR`` reads every ``result.json`` under the folder (one per Hydra job), groups
the runs by their label (the method choice plus any overrides other than the seed), and writes:

- ``report.md`` and ``report.csv``: one row per label, mean ± sample std over the seeds, each figure also
  relative to full fine-tuning (the label whose method is ``full``);
- ``memory_vs_throughput.png``, ``accuracy_vs_trainable.png`` and ``loss_curves.png`` (from each run's
  ``events.jsonl``);
- when runs evaluated during training (``train.eval_every``), a table of validation accuracy and loss
  per evaluation step and ``valid_curves.png`` (``peftlab.report_curves``);
- the environments that made the runs (torch, transformers, thread count, device, commit;
  ``peftlab.report_environment``), with a warning when they differ.

Runs that ran out of memory or failed are counted and listed with their error; a job folder without a
``result.json`` (killed, still running) is listed as ``incomplete``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.logging import EVENTS_FILE, is_finite_number, is_step, read_events
from peftlab.plotting import decorate_axes, group_colour, pyplot, save_figure

RESULT_FILE = "result.json"
TRAIN_LOSS_KEY = "train_loss"
CURVES_PLOT = "valid_curves.png"  # only when runs evaluated during training (peftlab.report_curves)
REPORT_FILES = (
    "report.md",
    "report.csv",
    "memory_vs_throughput.png",
    "accuracy_vs_trainable.png",
    "loss_curves.png",
    CURVES_PLOT,
)
FULL_METHOD = "full"
STATUS_OK = "ok"
STATUS_INCOMPLETE = "incomplete"
MEMORY_UNIT_NOTE = "GiB = 2^30 bytes"
LABEL_EXCLUDED_KEYS = ("seed", "method", "experiment", "hparams_search")


@dataclass(frozen=True)
class Column:
    """One figure of the table: the ``result.json`` metric it averages and how to print it."""

    key: str
    title: str
    digits: int
    relative: bool  # also shown as a ratio to full fine-tuning


COLUMNS: tuple[Column, ...] = (
    Column("peak_mem_gib", "peak memory (GiB)", 3, True),
    Column("tokens_per_s", "tokens/s", 1, True),
    Column("step_time_ms_p50", "step time p50 (ms)", 1, True),
    Column("world_size", "ranks", 0, False),  # processes (GPUs) per run: train.strategy ddp / fsdp
    Column("trainable_pct", "trainable %", 4, False),
    Column("final_valid_loss", "valid loss", 4, False),
    Column("token_accuracy", "token accuracy", 4, False),
    Column("task_accuracy", "task accuracy", 4, False),
)


@dataclass
class RunResult:
    """One job of a sweep: its folder and the parsed ``result.json`` (or ``incomplete``)."""

    run_dir: Path
    status: str
    label: str
    method: str
    seed: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    method_choice: str | None = None  # the method config chosen (e.g. lora_r64)
    overrides: list[str] | None = None  # the job's command-line overrides, as Hydra recorded them
    system: dict[str, Any] | None = None  # versions, threads, device and commit the run recorded

    @property
    def ok(self) -> bool:
        """True when the run finished and its figures can be averaged."""
        return self.status == STATUS_OK


@dataclass
class GroupSummary:
    """The runs sharing one label, with mean and std of every column over the finished ones."""

    label: str
    method: str
    runs: list[RunResult]
    mean: dict[str, float | None]
    std: dict[str, float | None]

    @property
    def finished(self) -> list[RunResult]:
        """The runs with status ``ok``."""
        return [run for run in self.runs if run.ok]

    def status_text(self) -> str:
        """``"3 ok"``, or e.g. ``"2 ok, 1 oom"`` when some runs did not finish."""
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        ordered = sorted(counts.items(), key=lambda item: (item[0] != STATUS_OK, item[0]))
        return ", ".join(f"{count} {status}" for status, count in ordered)


@dataclass
class ReportFiles:
    """Where ``write_report`` put its outputs."""

    markdown: Path
    csv: Path
    plots: list[Path]


# --- reading ---------------------------------------------------------------------------------------


def load_results(sweep_dir: str | Path) -> list[RunResult]:
    """Every run under ``sweep_dir``: each ``result.json``, plus job folders that have none yet."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(
            f"{root}: not a folder; pass the sweep folder Hydra printed (runs/<task>/multirun/...)"
        )
    runs = [_read_result(path) for path in sorted(root.rglob(RESULT_FILE))]
    done = {run.run_dir for run in runs}
    for hydra_dir in sorted(root.rglob(".hydra")):
        job_dir = hydra_dir.parent
        if job_dir not in done and not any(parent in done for parent in job_dir.parents):
            runs.append(_incomplete_run(job_dir))
    if not runs:
        raise ValueError(
            f"{root}: no {RESULT_FILE} found; is this the folder of a finished `peftlab` run or sweep?"
        )
    relabel_by_varying_overrides(runs)
    return sorted(
        runs, key=lambda run: (run.label, run.seed if run.seed is not None else -1, str(run.run_dir))
    )


def _read_result(path: Path) -> RunResult:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: line {error.lineno}: not valid JSON ({error.msg}); delete or fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for name in ("status", "label", "method"):
        if not isinstance(data.get(name), str):
            raise ValueError(f"{path}: field '{name}' must be a string, got {data.get(name)!r}")
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: field 'metrics' must be an object, got {type(metrics).__name__}")
    seed = data.get("seed")
    overrides = data.get("overrides")
    return RunResult(
        run_dir=path.parent,
        status=data["status"],
        label=data["label"],
        method=data["method"],
        seed=seed if isinstance(seed, int) else None,
        metrics=metrics,
        error=data.get("error"),
        method_choice=data.get("method_choice") if isinstance(data.get("method_choice"), str) else None,
        overrides=[str(item) for item in overrides] if isinstance(overrides, list) else None,
        system=data.get("system") if isinstance(data.get("system"), dict) else None,
    )


def relabel_by_varying_overrides(runs: Sequence[RunResult]) -> None:
    """Label each run by its method choice plus the overrides whose values differ across the sweep.

    Overrides every job shares (``logger=none``, ``bench.steps=3``) say nothing about a row and are
    left out; runs without recorded overrides keep the label in their ``result.json``.
    """
    if not runs or any(run.overrides is None or run.method_choice is None for run in runs):
        return
    values: dict[str, set[str | None]] = {}
    parsed = [dict(_split_override(item) for item in run.overrides or []) for run in runs]
    for key in {key for items in parsed for key in items}:
        values[key] = {items.get(key) for items in parsed}
    varying = {key for key, seen in values.items() if len(seen) > 1}
    for run, items in zip(runs, parsed, strict=True):
        kept = [f"{key}={value}" for key, value in items.items() if key in varying]
        run.label = run_label(str(run.method_choice), kept)


def _split_override(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key, value


def run_label(method_choice: str, overrides: Sequence[str]) -> str:
    """What the report groups by: the method config chosen, plus every override but seed and method."""
    others = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in LABEL_EXCLUDED_KEYS]
    return method_choice + (f" [{','.join(others)}]" if others else "")


def _incomplete_run(job_dir: Path) -> RunResult:
    """A job folder Hydra created but no ``result.json`` closed (killed, or still running)."""
    from omegaconf import OmegaConf

    hydra_dir = job_dir / ".hydra"
    overrides = [str(item) for item in _load_yaml(hydra_dir / "overrides.yaml", OmegaConf) or []]
    hydra_cfg = _load_yaml(hydra_dir / "hydra.yaml", OmegaConf)
    choice = OmegaConf.select(hydra_cfg, "hydra.runtime.choices.method") if hydra_cfg is not None else None
    if choice is None:
        choice = next((item.split("=", 1)[1] for item in overrides if item.startswith("method=")), "?")
    config = _load_yaml(hydra_dir / "config.yaml", OmegaConf)
    method = OmegaConf.select(config, "method.name", default="?") if config is not None else "?"
    seed = OmegaConf.select(config, "seed", default=None) if config is not None else None
    return RunResult(
        job_dir,
        STATUS_INCOMPLETE,
        run_label(str(choice), overrides),
        str(method),
        seed if isinstance(seed, int) else None,
        method_choice=str(choice),
        overrides=overrides,
    )


def _load_yaml(path: Path, omegaconf: Any) -> Any:
    return omegaconf.load(path) if path.is_file() else None


def read_loss_curve(events_path: Path) -> tuple[list[int], list[float]]:
    """``(steps, losses)`` of the training-loss events in one ``events.jsonl`` (empty if none)."""
    steps: list[int] = []
    losses: list[float] = []
    if not events_path.is_file():
        return steps, losses
    for event in read_events(events_path):
        loss = event.get(TRAIN_LOSS_KEY) if isinstance(event, dict) else None
        step = event.get("step") if isinstance(event, dict) else None
        if is_finite_number(loss) and is_step(step):
            steps.append(step)
            losses.append(float(loss))
    return steps, losses


# --- aggregating -----------------------------------------------------------------------------------


def summarize(runs: Sequence[RunResult]) -> list[GroupSummary]:
    """Group runs by label; mean and sample std (over seeds) of every column, finished runs only."""
    by_label: dict[str, list[RunResult]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    groups = []
    for label, members in by_label.items():
        finished = [run for run in members if run.ok]
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for column in COLUMNS:
            values = [float(v) for run in finished if is_finite_number(v := run.metrics.get(column.key))]
            mean[column.key] = statistics.fmean(values) if values else None
            std[column.key] = statistics.stdev(values) if len(values) >= 2 else None
        method = next((run.method for run in members if run.method != "?"), "?")
        groups.append(GroupSummary(label, method, members, mean, std))
    return sorted(groups, key=lambda group: (group.method != FULL_METHOD, group.label))


def full_finetuning_group(groups: Sequence[GroupSummary]) -> GroupSummary | None:
    """The reference group: the first label whose method is full fine-tuning and that has finished runs."""
    return next((g for g in groups if g.method == FULL_METHOD and g.finished), None)


def relative_to(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


# --- writing ---------------------------------------------------------------------------------------


def format_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    """``"1.234 ± 0.010"``; just the mean for a single seed; ``"–"`` when missing."""
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_rows(groups: Sequence[GroupSummary]) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Header and formatted rows for markdown, plus raw numeric rows for CSV."""
    reference = full_finetuning_group(groups)
    header = ["label", "method", "runs"]
    for column in COLUMNS:
        header.append(column.title)
        if column.relative:
            header.append(f"{column.title.split(' (')[0]} × full")
    text_rows: list[list[str]] = []
    csv_rows: list[dict[str, Any]] = []
    for group in groups:
        text = [group.label, group.method, group.status_text()]
        raw: dict[str, Any] = {
            "label": group.label,
            "method": group.method,
            "runs": len(group.runs),
            "runs_ok": len(group.finished),
            "status": group.status_text(),
        }
        for column in COLUMNS:
            mean, std = group.mean[column.key], group.std[column.key]
            text.append(format_mean_std(mean, std, column.digits))
            raw[f"{column.key}_mean"] = mean
            raw[f"{column.key}_std"] = std
            if column.relative:
                ratio = relative_to(mean, reference.mean[column.key] if reference else None)
                text.append("–" if ratio is None else f"{ratio:.3f}")
                raw[f"{column.key}_vs_full"] = ratio
        text_rows.append(text)
        csv_rows.append(raw)
    return header, text_rows, csv_rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines: the header, the separator, then the rows (``|`` in a cell escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def render_markdown(
    sweep_dir: Path,
    groups: Sequence[GroupSummary],
    runs: Sequence[RunResult],
    extra_sections: Sequence[str] = (),
) -> str:
    """The markdown report: the table, what the units mean, every run that did not finish, the plots.

    ``extra_sections`` (markdown lines, e.g. the validation curves) go after the unfinished runs.
    """
    header, rows, _ = table_rows(groups)
    reference = full_finetuning_group(groups)
    lines = [
        f"# peftlab report: `{sweep_dir}`",
        "",
        f"{len(runs)} runs in {len(groups)} groups; mean ± sample std over seeds (finished runs only).",
        f"Relative columns (× full) divide by the `{reference.label}` row."
        if reference
        else "No finished full fine-tuning run in this sweep, so the × full columns are empty.",
        "",
        *markdown_table(header, rows),
    ]
    lines += [
        "",
        f"Memory is in {MEMORY_UNIT_NOTE}: on a GPU the CUDA allocator's peak",
        "(`torch.cuda.max_memory_allocated`), on the CPU the process's peak resident set size.",
        "A token is one real (non-padding) position of `input_ids`",
        "in a training batch; each result.json also has `tokens_per_s_total` (padding included) and",
        "`tokens_per_s_trained` (positions the loss is taken over). Virtual tokens are not counted.",
        "Step time is the median over the timed steps; warm-up steps are not counted.",
        "Runs on several ranks (`ranks` > 1) report memory per GPU (the largest rank's peak; every rank's is",
        "in `peak_mem_gib_per_rank`) and global tokens/s (all ranks together).",
    ]
    unfinished = [run for run in runs if not run.ok]
    if unfinished:
        lines += [
            "",
            "## Runs that did not finish",
            "",
            "| run | label | seed | status | error |",
            "|---|---|---|---|---|",
        ]
        for run in unfinished:
            error = (run.error or "").splitlines()[0][:200] if run.error else ""
            lines.append(
                f"| `{run.run_dir}` | {run.label} | {run.seed} | {run.status} | {error.replace('|', '/')} |"
            )
    if extra_sections:
        lines += ["", *extra_sections]
    lines += [
        "",
        "![memory vs throughput](memory_vs_throughput.png)",
        "",
        "![accuracy vs trainable parameters](accuracy_vs_trainable.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
    ]
    return "\n".join(lines)


def write_csv(path: Path, groups: Sequence[GroupSummary]) -> None:
    """One CSV row per group with raw (unformatted) means, stds and ratios to full fine-tuning."""
    _, _, rows = table_rows(groups)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, overwrite: bool = False
) -> ReportFiles:
    """Read a sweep folder; write the markdown, CSV and PNG report into ``out_dir`` (default: that folder).

    Existing report files are kept unless ``overwrite`` is true.
    """
    root = Path(sweep_dir)
    runs = load_results(root)
    target = Path(out_dir) if out_dir is not None else root
    existing = [target / name for name in REPORT_FILES if (target / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]}: already exists; pass --overwrite to replace the report, "
            "or --out to write elsewhere"
        )
    from peftlab import report_curves  # it builds on this module's groups
    from peftlab.report_environment import render_environment_section

    target.mkdir(parents=True, exist_ok=True)
    groups = summarize(runs)
    curves = report_curves.summarize_curves(groups)
    with_curves = report_curves.has_intermediate_evaluations(curves)
    curve_lines = report_curves.render_curve_section(curves) if with_curves else []
    markdown = target / "report.md"
    extra_sections = [*curve_lines, *([""] if curve_lines else []), *render_environment_section(runs)]
    markdown.write_text(render_markdown(root, groups, runs, extra_sections), encoding="utf-8")
    csv_path = target / "report.csv"
    write_csv(csv_path, groups)
    plots = [
        plot_memory_vs_throughput(groups, target / "memory_vs_throughput.png"),
        plot_accuracy_vs_trainable(groups, target / "accuracy_vs_trainable.png"),
        plot_loss_curves(groups, target / "loss_curves.png"),
    ]
    if with_curves:
        colours = {group.label: group_colour(index) for index, group in enumerate(groups)}
        plots.append(report_curves.plot_valid_curves(curves, target / report_curves.CURVES_PLOT, colours))
    return ReportFiles(markdown, csv_path, plots)


# --- plots -----------------------------------------------------------------------------------------


def plot_memory_vs_throughput(groups: Sequence[GroupSummary], path: Path) -> Path:
    """Peak memory against tokens/s, one point (± std) per group."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for index, group in enumerate(groups):
        x, y = group.mean["tokens_per_s"], group.mean["peak_mem_gib"]
        if x is None or y is None:
            continue
        axes.errorbar(
            x,
            y,
            xerr=group.std["tokens_per_s"],
            yerr=group.std["peak_mem_gib"],
            fmt="o",
            capsize=3,
            color=group_colour(index),
            label=group.label,
        )
    axes.set_xlabel("tokens/s (real input tokens, no padding)")
    axes.set_ylabel(f"peak memory ({MEMORY_UNIT_NOTE})")
    axes.set_title("Memory vs throughput")
    decorate_axes(axes)
    save_figure(figure, path)
    return path


def plot_accuracy_vs_trainable(groups: Sequence[GroupSummary], path: Path) -> Path:
    """Accuracy (task accuracy where the data has labels, else token accuracy) vs trainable parameters."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    metric = "task_accuracy" if any(g.mean["task_accuracy"] is not None for g in groups) else "token_accuracy"
    for index, group in enumerate(groups):
        params = [r.metrics.get("trainable_params") for r in group.finished]
        params = [float(p) for p in params if is_finite_number(p) and p > 0]
        y = group.mean[metric]
        if not params or y is None:
            continue
        axes.errorbar(
            statistics.fmean(params),
            y,
            yerr=group.std[metric],
            fmt="o",
            capsize=3,
            color=group_colour(index),
            label=group.label,
        )
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters")
    axes.set_ylabel(metric.replace("_", " "))
    axes.set_title("Accuracy vs trainable parameters")
    decorate_axes(axes)
    save_figure(figure, path)
    return path


def plot_loss_curves(groups: Sequence[GroupSummary], path: Path) -> Path:
    """Training loss per step from each run's ``events.jsonl``, one colour per group."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for index, group in enumerate(groups):
        colour = group_colour(index)
        labelled = False
        for run in group.finished:
            steps, losses = read_loss_curve(run.run_dir / EVENTS_FILE)
            if not steps:
                continue
            axes.plot(
                steps, losses, color=colour, alpha=0.8, linewidth=1.2, label=None if labelled else group.label
            )
            labelled = True
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("Loss curves")
    decorate_axes(axes)
    save_figure(figure, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``peftlab report SWEEP_DIR [--out DIR] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="peftlab report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dir", help="a Hydra sweep folder (runs/<task>/multirun/<date>_<time>) or one run folder"
    )
    parser.add_argument("--out", default=None, help="where to write the report (default: SWEEP_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace report files that already exist")
    args = parser.parse_args(argv)
    try:
        files = write_report(args.sweep_dir, args.out, args.overwrite)
    except ValueError as error:
        parser.exit(2, f"peftlab report: error: {error}\n")
    print(f"wrote {files.markdown}, {files.csv} and {len(files.plots)} plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
