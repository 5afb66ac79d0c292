"""``peftlab report``'s validation curves: evaluation events averaged per group at shared steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from peftlab.hydra_app import train_main
from peftlab.logging import read_events
from peftlab.report import CURVES_PLOT, load_results, summarize, write_report
from peftlab.report_curves import read_eval_points, summarize_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)
EVAL_STEPS = (2, 4, 6)


def _write_run(job_dir: Path, method: str, seed: int, status: str, evaluations: dict[int, tuple[float, float]]):
    """A finished job whose events evaluate at the given steps: ``{step: (accuracy, loss)}``."""
    job_dir.mkdir(parents=True)
    result = {"status": status, "label": method, "method": method, "seed": seed, "metrics": {}}
    (job_dir / "result.json").write_text(json.dumps(result))
    events = []
    for step in range(1, max(EVAL_STEPS) + 1):
        event = {"step": step, "epoch": step / 3, "train_loss": 1.0 / step}
        if step in evaluations:
            accuracy, loss = evaluations[step]
            event |= {"valid_loss": loss, "valid_accuracy": accuracy}
        events.append(event)
    (job_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))


@pytest.fixture
def curve_sweep(tmp_path: Path) -> tuple[Path, dict[str, dict[int, list[tuple[float, float]]]]]:
    """full and lora, 3 seeds, random evaluations at steps 2, 4, 6; one lora seed skips step 4; one oom."""
    rng = np.random.default_rng()
    truth: dict[str, dict[int, list[tuple[float, float]]]] = {"full": {}, "lora": {}}
    for job, (method, seed) in enumerate((m, s) for m in truth for s in SEEDS):
        steps = [step for step in EVAL_STEPS if not (method == "lora" and seed == 1 and step == 4)]
        evaluations = {step: (float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.1, 2.0))) for step in steps}
        for step, value in evaluations.items():
            truth[method].setdefault(step, []).append(value)
        _write_run(tmp_path / str(job), method, seed, "ok", evaluations)
    _write_run(tmp_path / "oom", "prefix_tuning", 0, "oom", {2: (0.5, 1.0)})
    return tmp_path, truth


def test_curves_average_each_group_over_seeds_at_the_steps_all_runs_evaluated(curve_sweep) -> None:
    root, truth = curve_sweep
    curves = {curve.label: curve for curve in summarize_curves(summarize(load_results(root)))}
    assert sorted(curves) == ["full", "lora"]  # the oom run has no curve
    assert curves["full"].steps == [2, 4, 6] and curves["lora"].steps == [2, 6]
    assert curves["full"].epochs == pytest.approx([2 / 3, 4 / 3, 2.0])
    for label, curve in curves.items():
        assert curve.runs == 3 and curve.accuracy_key == "valid_accuracy"
        for index, step in enumerate(curve.steps):
            values = np.array(truth[label][step], dtype=np.float64)
            assert curve.accuracy_mean[index] == pytest.approx(values[:, 0].mean(), rel=1e-12)
            assert curve.accuracy_std[index] == pytest.approx(values[:, 0].std(ddof=1), rel=1e-9)
            assert curve.loss_mean[index] == pytest.approx(values[:, 1].mean(), rel=1e-12)
            assert curve.loss_std[index] == pytest.approx(values[:, 1].std(ddof=1), rel=1e-9)


def test_report_shows_the_curve_table_and_plot_when_runs_evaluated_during_training(curve_sweep) -> None:
    root, truth = curve_sweep
    files = write_report(root, root / "out")
    assert files.plots[-1] == root / "out" / CURVES_PLOT
    data = files.plots[-1].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    text = files.markdown.read_text()
    assert "## Validation during training" in text and f"]({CURVES_PLOT})" in text
    full_4 = np.array(truth["full"][4])[:, 0]
    row_4 = next(line for line in text.splitlines() if line.startswith("| 4 | 1.33 |"))
    assert f"{full_4.mean():.4f} ± {full_4.std(ddof=1):.4f}" in row_4
    assert row_4.count("| –") == 1  # lora did not evaluate at step 4 in every run


def test_report_without_intermediate_evaluations_has_no_curve_section(tmp_path: Path) -> None:
    for seed in SEEDS:
        _write_run(tmp_path / str(seed), "lora", seed, "ok", {6: (0.8, 0.5)})  # the final evaluation only
    files = write_report(tmp_path)
    assert CURVES_PLOT not in [path.name for path in files.plots]
    assert not (tmp_path / CURVES_PLOT).exists()
    assert "Validation during training" not in files.markdown.read_text()


def test_eval_points_skip_training_events_and_read_language_model_accuracy(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        {"step": 1, "train_loss": 2.0},
        {"step": 2, "train_loss": 1.5, "valid_loss": 1.25, "valid_mean_token_accuracy": 0.375},
        {"step": 3, "valid_loss": float("nan")},
    ]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    points = read_eval_points(events)
    assert [(p.step, p.loss, p.accuracy, p.accuracy_key) for p in points] == [
        (2, 1.25, 0.375, "valid_mean_token_accuracy")
    ]
    assert read_eval_points(tmp_path / "missing.jsonl") == []


def test_a_real_sweep_with_eval_every_reports_its_validation_curves(tmp_path: Path, monkeypatch) -> None:
    sweep = tmp_path / "sweep"
    argv = ["peftlab train", "-m", "method=full,prompt_tuning", "seed=0,1", "train.max_steps=4",
            "train.eval_every=2", "train.batch_size=4", "logger=none", "train.device=cpu",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    train_main()
    curves = {curve.label: curve for curve in summarize_curves(summarize(load_results(sweep)))}
    assert sorted(curves) == ["full", "prompt_tuning"]
    for label, curve in curves.items():
        assert curve.steps == [2, 4] and curve.runs == 2
        assert curve.accuracy_key == "valid_mean_token_accuracy"
        runs = [run.run_dir for run in load_results(sweep) if run.label == label]
        assert len(runs) == 2
        for index, step in enumerate(curve.steps):
            logged = [next(e for e in read_events(run / "events.jsonl") if e["step"] == step) for run in runs]
            losses = [event["valid_loss"] for event in logged]
            assert curve.loss_mean[index] == pytest.approx(float(np.mean(losses)), rel=1e-12)
    text = write_report(sweep).markdown.read_text()
    assert "## Validation during training" in text and (sweep / CURVES_PLOT).stat().st_size > 5_000
