"""``peftlab report``: sweep folder -> markdown/CSV table (mean ± std over seeds, vs full) and PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from peftlab.report import (
    COLUMNS,
    CURVES_PLOT,
    REPORT_FILES,
    load_results,
    main,
    read_loss_curve,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)
FINISHED_METHODS = ("full", "lora", "prompt_tuning")


def _write_run(
    job_dir: Path,
    method: str,
    seed: int,
    status: str,
    metrics: dict,
    losses: list[float],
    error=None,
    system: dict | None = None,
):
    job_dir.mkdir(parents=True)
    (job_dir / ".hydra").mkdir()
    (job_dir / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
    result = {
        "status": status,
        "label": method,
        "method": method,
        "seed": seed,
        "metrics": metrics,
        "error": error,
    }
    if system is not None:
        result["system"] = system
    (job_dir / "result.json").write_text(json.dumps(result))
    events = [{"step": step, "train_loss": loss, "lr": 1e-3} for step, loss in enumerate(losses, start=1)]
    (job_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, dict[str, dict[str, list[float]]]]:
    """A sweep folder with 3 methods x 3 seeds of random figures, one oom, one failed and one killed job."""
    rng = np.random.default_rng()
    root = tmp_path / "multirun"
    truth: dict[str, dict[str, list[float]]] = {}
    job = 0
    for method in FINISHED_METHODS:
        truth[method] = {column.key: [] for column in COLUMNS}
        for seed in SEEDS:
            metrics = {column.key: float(rng.uniform(0.1, 100.0)) for column in COLUMNS}
            metrics["trainable_params"] = int(rng.integers(100, 10_000))
            for key, value in metrics.items():
                truth[method].setdefault(key, []).append(value)
            _write_run(root / str(job), method, seed, "ok", metrics, list(rng.uniform(1, 5, size=6)))
            job += 1
    _write_run(
        root / str(job), "prefix_tuning", 0, "oom", {}, [], error="OutOfMemoryError: CUDA out of memory"
    )
    _write_run(root / str(job + 1), "prefix_tuning", 1, "failed", {}, [], error="RuntimeError: exploded")
    killed = root / str(job + 2)
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text("- method=prefix_tuning\n- seed=2\n")
    return root, truth


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["label"]: row for row in csv.DictReader(handle)}


def test_report_table_has_one_row_per_method_with_mean_std_over_seeds(sweep) -> None:
    root, truth = sweep
    files = write_report(root)
    rows = _read_csv(files.csv)
    assert set(rows) == {*FINISHED_METHODS, "prefix_tuning"}
    for method in FINISHED_METHODS:
        for column in COLUMNS:
            values = np.array(truth[method][column.key], dtype=np.float64)
            assert float(rows[method][f"{column.key}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(rows[method][f"{column.key}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-9)
            if column.relative:
                reference = np.mean(truth["full"][column.key])
                assert float(rows[method][f"{column.key}_vs_full"]) == pytest.approx(
                    values.mean() / reference
                )
    assert float(rows["full"]["peak_mem_gib_vs_full"]) == pytest.approx(1.0)
    assert rows["prefix_tuning"]["runs_ok"] == "0"
    assert rows["prefix_tuning"]["peak_mem_gib_mean"] == ""


def test_report_markdown_shows_failed_oom_and_incomplete_runs(sweep) -> None:
    root, truth = sweep
    files = write_report(root)
    text = files.markdown.read_text()
    prefix_row = next(line for line in text.splitlines() if line.startswith("| prefix_tuning |"))
    assert "1 failed" in prefix_row and "1 incomplete" in prefix_row and "1 oom" in prefix_row
    assert "OutOfMemoryError: CUDA out of memory" in text
    assert "RuntimeError: exploded" in text
    lora_mean = np.mean(truth["lora"]["tokens_per_s"])
    lora_std = np.std(truth["lora"]["tokens_per_s"], ddof=1)
    assert f"{lora_mean:.1f} ± {lora_std:.1f}" in text
    assert "GiB = 2^30 bytes" in text and "non-padding" in text


def test_report_writes_valid_pngs_with_loss_curves(sweep) -> None:
    root, _ = sweep
    files = write_report(root, root / "out")
    # no run evaluated during training, so no validation-curve plot (tests/test_report_curves.py)
    assert [path.name for path in files.plots] == [name for name in REPORT_FILES[2:] if name != CURVES_PLOT]
    for path in files.plots:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    steps, losses = read_loss_curve(root / "0" / "events.jsonl")
    assert steps == list(range(1, 7)) and len(losses) == 6


def test_report_keeps_existing_files_unless_overwrite(sweep, capsys) -> None:
    root, _ = sweep
    write_report(root)
    before = (root / "report.md").read_text()
    (root / "report.md").write_text("my notes")
    with pytest.raises(ValueError, match=r"report\.md: already exists; pass --overwrite"):
        write_report(root)
    assert (root / "report.md").read_text() == "my notes"
    assert main([str(root), "--overwrite"]) == 0
    assert (root / "report.md").read_text() == before
    assert "wrote" in capsys.readouterr().out


def test_report_without_full_finetuning_leaves_relative_columns_empty(tmp_path: Path) -> None:
    _write_run(tmp_path / "0", "lora", 0, "ok", {"peak_mem_gib": 1.5, "tokens_per_s": 10.0}, [2.0, 1.0])
    rows = _read_csv(write_report(tmp_path).csv)
    assert rows["lora"]["peak_mem_gib_mean"] == "1.5" and rows["lora"]["peak_mem_gib_vs_full"] == ""
    assert rows["lora"]["peak_mem_gib_std"] == ""  # one seed: no std


def test_report_errors_name_the_bad_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        load_results(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no result\.json found"):
        load_results(tmp_path)
    bad = tmp_path / "0" / "result.json"
    bad.parent.mkdir()
    bad.write_text('{"status": "ok",\n "label": }')
    with pytest.raises(ValueError, match=r"0/result\.json: line 2: not valid JSON"):
        load_results(tmp_path)
    bad.write_text(json.dumps({"status": "ok", "label": 3, "method": "lora"}))
    with pytest.raises(ValueError, match="field 'label' must be a string"):
        load_results(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_labels_keep_only_overrides_that_vary_across_the_sweep(tmp_path: Path) -> None:
    jobs = [
        ("lora", ["method=lora", "seed=0", "logger=none", "method.r=8"]),
        ("lora", ["method=lora", "seed=1", "logger=none", "method.r=8"]),
        ("lora", ["method=lora", "seed=0", "logger=none", "method.r=16"]),
        ("full", ["method=full", "seed=0", "logger=none", "method.r=8"]),
    ]
    for number, (method, overrides) in enumerate(jobs):
        job = tmp_path / str(number)
        job.mkdir()
        result = {
            "status": "ok",
            "label": "unused",
            "method": method,
            "method_choice": method,
            "seed": 0,
            "overrides": overrides,
            "metrics": {"peak_mem_gib": float(number + 1)},
        }
        (job / "result.json").write_text(json.dumps(result))
    rows = _read_csv(write_report(tmp_path).csv)
    assert set(rows) == {"lora [method.r=8]", "lora [method.r=16]", "full [method.r=8]"}
    assert rows["lora [method.r=8]"]["runs"] == "2"
    assert float(rows["lora [method.r=8]"]["peak_mem_gib_mean"]) == pytest.approx(1.5)


def _system(threads: int, commit: str = "7ca14c33b6b0783c", dirty: bool = False) -> dict:
    return {
        "torch": "2.13.0+cpu",
        "transformers": "5.25.0",
        "torch_threads": threads,
        "cuda_available": False,
        "gpu_name": None,
        "source": {"commit": commit, "dirty": dirty},
    }


def test_report_lists_the_environments_and_warns_when_the_runs_differ(tmp_path: Path) -> None:
    metrics = {"task_accuracy": 0.8}
    one = tmp_path / "one"
    _write_run(one / "0", "full", 0, "ok", metrics, [1.0], system=_system(1))
    _write_run(one / "1", "lora", 0, "ok", metrics, [1.0], system=_system(1))
    text = write_report(one).markdown.read_text()
    assert "## Environment" in text
    assert "| 2.13.0+cpu | 5.25.0 | 1 | CPU | 7ca14c3 | 2: full ×1; lora ×1 |" in text
    assert "environments" not in text and "commits" not in text

    mixed = tmp_path / "mixed"
    _write_run(mixed / "0", "prompt_tuning", 0, "ok", metrics, [1.0], system=_system(1))
    _write_run(mixed / "1", "prompt_tuning", 1, "ok", metrics, [1.0], system=_system(2))
    _write_run(mixed / "2", "prompt_tuning", 2, "ok", metrics, [1.0], system=_system(1, "abcdef012", True))
    _write_run(mixed / "3", "lora", 0, "ok", metrics, [1.0])  # an old result.json without a system record
    text = write_report(mixed).markdown.read_text()
    assert "| 2.13.0+cpu | 5.25.0 | 2 | CPU | 7ca14c3 | 1: prompt_tuning ×1 |" in text
    assert "| 2.13.0+cpu | 5.25.0 | 1 | CPU | abcdef0 (uncommitted changes) | 1: prompt_tuning ×1 |" in text
    assert "| ? | ? | ? | ? | ? | 1: lora ×1 |" in text
    assert "**These runs come from 3 environments.**" in text  # threads 1, threads 2, unrecorded
    assert "The runs were made at 3 commits" in text

    commits_only = tmp_path / "commits"
    _write_run(commits_only / "0", "lora", 0, "ok", metrics, [1.0], system=_system(1))
    _write_run(commits_only / "1", "lora", 1, "ok", metrics, [1.0], system=_system(1, "0123456789"))
    text = write_report(commits_only).markdown.read_text()
    assert "environments" not in text and "The runs were made at 2 commits" in text
