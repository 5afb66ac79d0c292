"""The Hydra apps (``peftlab train`` / ``peftlab bench``): configs, overrides, sweeps and result.json."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import peftlab
import peftlab.train
from peftlab.builder import method_config
from peftlab.hydra_app import (
    CONFIG_PATH,
    ExperimentConfig,
    bench_main,
    check_settings,
    step_figures,
    train_main,
)
from peftlab.models import build_model
from peftlab.report import write_report
from peftlab.run_config import RunConfig

CONFIGS = Path(CONFIG_PATH)
FOUR_METHODS = ("lora", "prompt_tuning", "prefix_tuning", "full")
QUICK_BENCH = ("logger=none", "bench.warmup_steps=1", "bench.steps=2")
# tiny-llama: hidden 64, 2 layers, 4 heads of 16, 2 key/value heads (kv width 32); counted by hand
HAND_COUNTED_TRAINABLE = {
    "lora": 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8)),  # q_proj and v_proj, r = 8
    "prompt_tuning": 20 * 64,  # 20 virtual tokens x hidden
    "prefix_tuning": 20 * 2 * 2 * 32,  # 20 tokens x (key, value) x layers x kv width
}


def run_app(monkeypatch: pytest.MonkeyPatch, app: Callable[[], object], *overrides: str) -> None:
    """Run a Hydra app in this process with ``overrides`` as its command line."""
    monkeypatch.setattr(sys, "argv", ["peftlab", *overrides])
    app()


def compose_settings(*overrides: str, config_name: str = "config") -> ExperimentConfig:
    """Compose ``configs/`` like the app does and build the typed settings."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name=config_name, overrides=["output_dir=unused", *overrides])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def read_result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def timed_events(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [event for event in events if event.get("phase") == "timed"]


def trainable_tensors(method: str) -> int:
    """How many parameter tensors AdamW keeps state for, from a freshly built model."""
    settings = compose_settings(f"method={method}")
    model = peftlab.apply(build_model("tiny-llama"), method_config(settings.method))
    return len(model.trainable_parameters())


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything starts building a run."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded although the config is invalid")

    monkeypatch.setattr(peftlab.train, "prepare_run", forbidden)
    monkeypatch.setattr(peftlab.train, "build_for_run", forbidden)


# --- configs ---------------------------------------------------------------------------------------


def test_default_train_config_is_the_embedded_default() -> None:
    settings = compose_settings()
    defaults = RunConfig()
    for name in ("model", "method", "data", "train", "logger", "seed"):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert dataclasses.asdict(settings.bench)["steps"] == defaults.bench.steps
    assert settings.task_name == "train"
    assert compose_settings(config_name="bench").task_name == "bench"


@pytest.mark.parametrize("group", ["method", "model", "data", "train", "logger", "experiment"])
def test_every_config_option_composes_into_typed_settings(group: str) -> None:
    options = sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))
    assert options, group
    for option in options:
        settings = compose_settings(f"{group}={option}", config_name="bench")
        assert isinstance(settings, ExperimentConfig)
        assert isinstance(settings.train.lr, float) and isinstance(settings.method.r, int)


def test_named_experiments_set_what_they_promise() -> None:
    bench = compose_settings("experiment=bench_llama_1b", config_name="bench")
    assert (bench.model.dtype, bench.bench.seq_len, bench.bench.data) == ("bfloat16", 2048, "synthetic")
    assert bench.model.config_overrides["hidden_size"] == 2048
    assert bench.model.config_overrides["num_hidden_layers"] == 16
    sweep = compose_settings("experiment=compare_methods_tiny", config_name="bench")
    assert sweep.model.preset == "tiny-llama" and sweep.train.max_steps == 20
    assert compose_settings("method=lora_triton").method.kernel == "triton"
    assert compose_settings("method=peft_lora").method.name == "peft_lora"
    real = compose_settings("method=prefix_tuning_real_tokens", "method.prefix_init_text=hi").method
    config = method_config(real, tokenizer="some/tokenizer")
    assert (config.prefix_init, config.prefix_init_text, config.tokenizer) == (
        "real_tokens",
        "hi",
        "some/tokenizer",
    )
    assert not config.prefix_projection


def test_optuna_search_is_optional() -> None:
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="optuna"):
            compose_settings("hparams_search=lora_optuna")
    else:
        assert compose_settings("hparams_search=lora_optuna").optimized_metric == "final_valid_loss"


@pytest.mark.parametrize(
    ("launcher", "plugin", "target"),
    [
        ("slurm_gpu", "hydra_submitit_launcher", "SlurmLauncher"),
        ("local_parallel", "hydra_joblib_launcher", "JoblibLauncher"),
    ],
)
def test_launcher_options_compose_when_their_plugin_is_installed(
    launcher: str, plugin: str, target: str
) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        try:
            importlib.import_module(f"hydra_plugins.{plugin}")
        except ImportError:
            with pytest.raises(Exception, match=launcher):
                compose(
                    config_name="bench", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True
                )
            return
        cfg = compose(config_name="bench", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.get("gpus_per_node", 1) == 1 and cfg.hydra.launcher.get("n_jobs", 2) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=nope", "Could not find 'method/nope'"),
        ("train.lr=abc", "Error merging override train.lr=abc"),
        ("method.rr=3", "Could not override 'method.rr'"),
        ("seed=one", "Error merging override seed=one"),
    ],
)
def test_bad_override_fails_with_hydras_message_before_loading_a_model(
    override: str, message: str, tmp_path: Path, monkeypatch, capsys, no_model_loading
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_app(monkeypatch, train_main, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("app", "overrides", "message"),
    [
        (train_main, ["method=peft_lora"], "usable only with `peftlab bench`"),
        (train_main, ["data=jsonl"], "no training data: set data.train_file=PATH.jsonl"),
        (train_main, ["method=prompt_tuning", "train.loraplus_lr_ratio=16"], "has no LoRA layers"),
        (train_main, ["train.lr=-1"], "train.lr is -1.0; it must be a finite number, 0 or more"),
        (train_main, ["train.batch_size=0"], "train.batch_size is 0; it must be at least 1"),
        (train_main, ["method=lora", "method.r=0"], "method.r is 0; the LoRA rank must be at least 1"),
        (train_main, ["train.strategy=mpi"], "train.strategy is 'mpi'; choose one of"),
        (train_main, ["train.epochs=0"], "train.epochs is 0 and train.max_steps is -1"),
        (bench_main, ["train.weight_decay=-0.1"], "train.weight_decay is -0.1; it must be at least 0"),
        (bench_main, ["bench.steps=0"], "bench.warmup_steps is 2 and bench.steps 0"),
        (bench_main, ["bench.data=disk"], "bench.data is 'disk'; choose one of train, synthetic"),
    ],
)
def test_unusable_settings_are_refused_before_loading_a_model(
    app, overrides: list[str], message: str, tmp_path, monkeypatch, capsys, no_model_loading
) -> None:
    with pytest.raises(SystemExit):
        run_app(monkeypatch, app, *overrides, f"hydra.run.dir={tmp_path}")
    assert message in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_sweep_members_with_unusable_settings_are_recorded_as_failed_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch, no_model_loading
) -> None:
    sweep = tmp_path / "sweep"
    run_app(monkeypatch, train_main, "-m", "method=peft_lora", "train.lr=-1,-2", "logger=none", f"hydra.sweep.dir={sweep}")
    results = [read_result(job) for job in sorted(sweep.iterdir()) if job.is_dir()]
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert all("usable only with `peftlab bench`" in r["error"] for r in results)


def test_benchmark_settings_ignore_the_training_length() -> None:
    settings = compose_settings("train.epochs=0", "train.max_steps=0", config_name="bench")
    check_settings(settings, "bench")  # the benchmark runs bench.warmup_steps + bench.steps
    with pytest.raises(ValueError, match=r"train\.epochs is 0 and train\.max_steps is 0"):
        check_settings(settings, "train")


# --- runs ------------------------------------------------------------------------------------------


def test_cpu_multirun_of_four_methods_then_report(tmp_path: Path, monkeypatch) -> None:
    sweep = tmp_path / "sweep"
    run_app(
        monkeypatch,
        bench_main,
        "-m",
        f"method={','.join(FOUR_METHODS)}",
        "seed=0,1",
        *QUICK_BENCH,
        f"hydra.sweep.dir={sweep}",
    )
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert len(jobs) == 8
    for job in jobs:
        result = read_result(job)
        assert result["status"] == "ok", result["error"]
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "run_config.json").is_file()
        metrics, method = result["metrics"], result["method"]
        expected = HAND_COUNTED_TRAINABLE.get(method, metrics["total_params"])
        assert metrics["trainable_params"] == expected
        # AdamW: two fp32 moments per trained element plus one fp32 step counter per tensor
        assert metrics["optimizer_state_bytes"] == 8 * expected + 4 * trainable_tensors(method)
        timed = timed_events(job)
        assert len(timed) == 2
        assert metrics["step_time_ms_p50"] == pytest.approx(
            statistics.median(e["step_time_s"] for e in timed) * 1e3
        )
        tokens = sum(e["tokens_per_s"] * e["step_time_s"] for e in timed)
        assert metrics["timed_tokens"] == pytest.approx(tokens, rel=1e-6)
        assert metrics["peak_mem_gib"] > 0 and metrics["final_valid_loss"] > 0
    files = write_report(sweep)
    with files.csv.open() as handle:
        rows = {row["label"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(FOUR_METHODS)
    assert all(row["runs_ok"] == "2" for row in rows.values())
    assert float(rows["full"]["tokens_per_s_vs_full"]) == pytest.approx(1.0)
    assert all(path.stat().st_size > 5_000 for path in files.plots)


def test_compare_methods_experiment_sweeps_the_four_methods(tmp_path: Path, monkeypatch) -> None:
    sweep = tmp_path / "sweep"
    run_app(
        monkeypatch,
        bench_main,
        "experiment=compare_methods_tiny",
        "seed=0",
        "bench.warmup_steps=1",
        "bench.steps=1",
        f"hydra.sweep.dir={sweep}",
    )
    results = [read_result(job) for job in sorted(sweep.iterdir()) if job.is_dir()]
    assert sorted(result["method"] for result in results) == sorted(FOUR_METHODS)
    assert all(result["status"] == "ok" and result["metrics"]["timed_steps"] == 1 for result in results)


def test_failed_and_oom_members_are_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    real_step = peftlab.train.train_step

    def failing_step(parts, batch):
        if parts.cfg.method.name == "prefix_tuning":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if parts.cfg.method.name == "full":
            raise RuntimeError("the step exploded")
        return real_step(parts, batch)

    monkeypatch.setattr(peftlab.train, "train_step", failing_step)
    sweep = tmp_path / "sweep"
    run_app(
        monkeypatch,
        bench_main,
        "-m",
        "method=prefix_tuning,full,lora",
        *QUICK_BENCH,
        f"hydra.sweep.dir={sweep}",
    )
    results = {read_result(job)["method"]: read_result(job) for job in sweep.iterdir() if job.is_dir()}
    assert results["prefix_tuning"]["status"] == "oom"
    assert "Tried to allocate 2.00 GiB" in results["prefix_tuning"]["error"]
    assert results["full"]["status"] == "failed"
    assert results["full"]["error"] == "RuntimeError: the step exploded"
    assert "failing_step" in results["full"]["traceback"]
    assert results["lora"]["status"] == "ok"
    text = write_report(sweep).markdown.read_text()
    assert "| prefix_tuning | prefix_tuning | 1 oom |" in text and "| full | full | 1 failed |" in text


def test_single_train_run_writes_its_folder_and_never_overwrites_it(tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_app(monkeypatch, train_main, "train.max_steps=2", "logger=none", f"hydra.run.dir={run_dir}")
    result = read_result(run_dir)
    assert result["status"] == "ok" and result["mode"] == "train"
    assert result["label"] == "lora [train.max_steps=2,logger=none]"  # every override but the seed
    for name in ("events.jsonl", "run_config.json", "summary.json", ".hydra/config.yaml", "adapter"):
        assert (run_dir / name).exists(), name
    metrics = result["metrics"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert metrics["steps"] == 2 and metrics["final_train_loss"] == events[-1]["train_loss"]
    assert metrics == {**metrics, **step_figures(events)}
    assert metrics["tokens_per_s"] == pytest.approx(
        events[-1]["tokens"]
        / sum(
            (e["tokens"] - p) / e["tokens_per_s"]
            for e, p in zip(events, [0] + [e["tokens"] for e in events[:-1]], strict=True)
        )
    )
    before = (run_dir / "result.json").read_text()
    with pytest.raises(SystemExit):
        run_app(monkeypatch, train_main, "train.max_steps=2", "logger=none", f"hydra.run.dir={run_dir}")
    assert (run_dir / "result.json").read_text() == before


def test_single_run_failure_is_recorded_then_raised(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("data went missing")

    monkeypatch.setattr(peftlab.train, "train_step", broken)
    with pytest.raises(SystemExit) as exit_info:
        run_app(monkeypatch, bench_main, *QUICK_BENCH, f"hydra.run.dir={tmp_path}")
    assert exit_info.value.code == 1
    assert "data went missing" in capsys.readouterr().err
    result = read_result(tmp_path)
    assert result["status"] == "failed" and result["error"] == "RuntimeError: data went missing"


def test_system_block_is_taken_before_the_run(tmp_path: Path, monkeypatch) -> None:
    """Threads and revision as they were when the run started, not after the run changed them."""
    threads_before = torch.get_num_threads()
    revisions = iter([{"commit": "c0ffee", "dirty": False}, {"commit": "c0ffee", "dirty": True}])
    monkeypatch.setattr("peftlab.hydra_app.source_revision", lambda: next(revisions))
    real_step = peftlab.train.train_step

    def step_that_changes_the_machine(parts, batch):
        torch.set_num_threads(threads_before + 1)
        return real_step(parts, batch)

    monkeypatch.setattr(peftlab.train, "train_step", step_that_changes_the_machine)
    run_dir = tmp_path / "run"
    try:
        run_app(monkeypatch, train_main, "train.max_steps=1", "logger=none", f"hydra.run.dir={run_dir}")
        assert torch.get_num_threads() == threads_before + 1  # the run did change it
    finally:
        torch.set_num_threads(threads_before)
    system = read_result(run_dir)["system"]
    assert system["torch_threads"] == threads_before
    assert system["source"] == {"commit": "c0ffee", "dirty": False}
