"""Bad configs fail before training with one clear line; a run never overwrites an earlier run's results;
a sweep member that raises is recorded as failed (or oom) while the others finish, and the report shows it."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import peftlab.train
from peftlab.builder import naming_the_setting
from peftlab.errors import AdapterError
from peftlab.hydra_app import train_main
from peftlab.report import main as report_main
from peftlab.run_config import RunConfig
from peftlab.train import RunFolderError, train

QUICK = ("train.max_steps=2", "train.batch_size=4", "logger=none", "train.device=cpu")


def tiny_run(output_dir: Path, **changes: Any) -> RunConfig:
    """2 LoRA steps on the shipped data; ``changes`` maps ``section.field`` to a value."""
    cfg = RunConfig(output_dir=str(output_dir), seed=1)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.device = 2, 4, "cpu"
    cfg.logger.console = False
    for dotted, value in changes.items():
        section, name = dotted.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def folder_snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` (but the lock) and its SHA-256."""
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != ".peftlab.lock"
    }


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model starts loading."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built although the config is invalid")

    monkeypatch.setattr(peftlab.train, "build_for_run", forbidden)


@pytest.fixture
def no_step_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a training step ran although the config is invalid")

    monkeypatch.setattr(peftlab.train, "train_step", forbidden)


# --- bad configs -------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"method.r": 0}, "method.r is 0; the LoRA rank must be at least 1"),
    ({"method.r": -8}, "method.r is -8"),
    ({"train.lr": -1e-3}, "train.lr is -0.001; it must be a finite number, 0 or more"),
    ({"train.lr": math.inf}, "train.lr is inf"),
    ({"train.lr": math.nan}, "train.lr is nan"),
    ({"train.weight_decay": -0.1}, "train.weight_decay is -0.1; it must be at least 0"),
    ({"method.name": "prompt_tuning", "method.num_virtual_tokens": 300},
     "method.num_virtual_tokens is 300, more than data.max_length (256)"),
    ({"method.name": "prefix_tuning", "method.num_virtual_tokens": 257, "data.max_length": 256},
     "method.num_virtual_tokens is 257"),
    ({"method.name": "prompt_tuning", "method.num_virtual_tokens": 0}, "method.num_virtual_tokens is 0"),
    ({"train.batch_size": 0}, "train.batch_size is 0; it must be at least 1"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SETTINGS, ids=[str(c) for c, _ in BAD_SETTINGS])
def test_bad_settings_fail_in_one_line_before_any_model_loads(
    tmp_path: Path, nothing_loads: None, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        train(tiny_run(tmp_path / "run", **changes))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "events.jsonl").exists()


def test_a_target_module_that_matches_nothing_fails_before_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_step_runs: None
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(AdapterError) as caught:
        train(tiny_run(run_dir, **{"method.target_modules": ["q_proj", "attn_qkv"]}))
    message = str(caught.value)
    assert "\n" not in message and "['attn_qkv'] match no module" in message and "q_proj, k_proj" in message
    assert not (run_dir / "events.jsonl").exists()
    monkeypatch.undo()
    summary = train(tiny_run(run_dir, **{"method.target_modules": ["q_proj"]}))  # the fixed config reuses the folder
    assert summary["steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "message", "recorded"),
    [
        # settings that need no model are refused before the run folder is claimed: no result.json
        (["method.r=0"], "peftlab train: error: method.r is 0", False),
        (["train.lr=-0.5"], "peftlab train: error: train.lr is -0.5", False),
        (["method=prompt_tuning", "method.num_virtual_tokens=4096"], "peftlab train: error: method.num_virtual_tokens is 4096", False),
        # a target that matches no module is found when the model is built: recorded as a failed run
        (["method.target_modules=[nope]"], "peftlab train: error: LoRAConfig: field 'target_modules' entries ['nope'] match no module", True),
    ],
)
def test_the_train_command_reports_a_bad_config_in_one_line_without_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    message: str,
    recorded: bool,
) -> None:
    monkeypatch.setattr(sys, "argv", ["peftlab train", *QUICK, *overrides, f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith(message), err
    result_file = tmp_path / "result.json"
    assert result_file.exists() == recorded
    if recorded:
        result = json.loads(result_file.read_text())
        assert result["status"] == "failed" and message.split("error: ")[1] in result["error"]


def test_a_model_folder_without_a_model_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "my_model"
    empty.mkdir()
    overrides = ["model.preset=null", f"model.name_or_path={empty}", f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", ["peftlab train", *QUICK, *overrides])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert f"peftlab train: error: model.name_or_path='{empty}': the folder holds neither a config.json" in err


def test_a_model_that_cannot_be_fetched_names_the_setting() -> None:
    unreachable = OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")
    with pytest.raises(ValueError) as caught, naming_the_setting("model.name_or_path", "roberta-base"):
        raise unreachable
    message = str(caught.value)
    assert message.startswith("model.name_or_path='roberta-base': cannot load it (We couldn't connect")
    assert "\n" not in message and "fetched once where the hub is reachable" in message
    assert caught.value.__cause__ is unreachable


# --- run folders -------------------------------------------------------------------------------------


def test_a_finished_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(tiny_run(run_dir))
    before = folder_snapshot(run_dir)
    assert {"summary.json", "events.jsonl", "run_config.json", "adapter/adapter_model.safetensors"} <= set(before)
    for changes in ({}, {"train.lr": 0.5, "method.r": 2}):
        with pytest.raises(RunFolderError, match=r"already holds the results of an earlier run .*train\.resume=true"):
            train(tiny_run(run_dir, **changes))
        assert folder_snapshot(run_dir) == before


def test_resuming_a_finished_run_keeps_its_results(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = train(tiny_run(run_dir))
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    events = (run_dir / "events.jsonl").read_text()
    second = train(tiny_run(run_dir, **{"train.resume": True}))
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert (run_dir / "events.jsonl").read_text() == events
    assert second["steps"] == first["steps"] and second["final_train_loss"] == first["final_train_loss"]


# --- sweeps ------------------------------------------------------------------------------------------


def test_a_failing_sweep_member_is_recorded_and_reported_while_the_others_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_step = peftlab.train.train_step

    def out_of_memory_for_prefix_tuning(parts: Any, batch: Any) -> Any:
        if parts.cfg.method.name == "prefix_tuning":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_step(parts, batch)

    monkeypatch.setattr(peftlab.train, "train_step", out_of_memory_for_prefix_tuning)
    sweep = tmp_path / "sweep"
    # method.r=0 breaks only the LoRA member (the other methods have no rank)
    monkeypatch.setattr(sys, "argv", ["peftlab train", "-m", "method=lora,prompt_tuning,prefix_tuning", "method.r=0",
                                      *QUICK, f"hydra.sweep.dir={sweep}"])
    train_main()
    results = {}
    for path in sweep.glob("*/result.json"):
        result = json.loads(path.read_text())
        results[result["method"]] = result
    assert sorted(results) == ["lora", "prefix_tuning", "prompt_tuning"]
    assert results["lora"]["status"] == "failed" and "method.r is 0" in results["lora"]["error"]
    assert results["prefix_tuning"]["status"] == "oom" and "Tried to allocate 9.00 GiB" in results["prefix_tuning"]["error"]
    assert results["prompt_tuning"]["status"] == "ok" and results["prompt_tuning"]["metrics"]["steps"] == 2
    capsys.readouterr()
    assert report_main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "| lora | lora | 1 failed |" in report and "| prefix_tuning | prefix_tuning | 1 oom |" in report
    assert "| prompt_tuning | prompt_tuning | 1 ok |" in report
    failed_rows = [line for line in report.splitlines() if "| failed |" in line or "| oom |" in line]
    assert any("method.r is 0" in row for row in failed_rows) and any("9.00 GiB" in row for row in failed_rows)
