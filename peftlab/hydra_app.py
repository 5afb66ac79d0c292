"""Hydra entry points: ``peftlab train ...`` and ``peftlab bench ...``.

Both compose ``configs/`` (``config.yaml``; ``bench.yaml`` for the benchmark) on top of the structured
schema registered here, so a typo, an unknown group option or a wrong type fails with Hydra's message
before any model loads. Each run (or multirun job) writes into Hydra's output folder:

- ``.hydra/`` (Hydra's composed config and overrides) and ``run_config.json`` (the resolved config);
- ``events.jsonl`` (every event of the run);
- ``result.json``: status (``ok`` | ``oom`` | ``failed``), label, method, seed, overrides, metrics, error.

A multirun job that runs out of memory or raises is recorded as such and the sweep goes on; so is one
whose settings cannot run (``check_settings``). A single run with such settings is refused before its
folder is claimed and writes nothing; a single run that fails later still writes its ``result.json``,
then exits with the error.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from peftlab.atomic import write_json_atomic
from peftlab.bench import BenchSettings, check_bench_settings
from peftlab.distributed import is_main_process
from peftlab.provenance import source_revision
from peftlab.report import run_label
from peftlab.run_checks import check_run_settings
from peftlab.run_config import PEFT_LORA, RunConfig
from peftlab.run_dir import claim_run_dir

VERSION_BASE = "1.3"
# configs/: inside the package in a wheel install (pyproject maps it to peftlab/configs), the checkout's
# top-level folder in an editable one. Absolute, because Hydra reads a relative config_path as a Python
# package when this module is imported from the installed package.
_WHEEL_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_PATH = str(_WHEEL_CONFIGS if _WHEEL_CONFIGS.is_dir() else _WHEEL_CONFIGS.parent.parent / "configs")
SCHEMA_NAME = "run_schema"
RESULT_FILE = "result.json"
RESULT_SCHEMA = "peftlab.result/1"
BENCH_ONLY_METHODS = (PEFT_LORA,)
STATUS_OK, STATUS_OOM, STATUS_FAILED = "ok", "oom", "failed"
# What a single run reports in one line (the user can act on the message); anything else keeps its traceback.
USER_ERRORS = (ValueError, FileExistsError, FloatingPointError)


@dataclass
class ExperimentConfig(RunConfig):
    """The Hydra schema: ``RunConfig`` plus the settings only the Hydra apps use."""

    bench: BenchSettings = field(default_factory=BenchSettings)
    task_name: str = "train"  # names the output folder: runs/<task_name>/...
    tags: list[str] = field(default_factory=list)  # free-form labels, passed to W&B
    optimized_metric: str | None = None  # result metric returned to a Hydra sweeper (e.g. Optuna)


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (first in ``configs/config.yaml``'s defaults)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=ExperimentConfig)


register_configs()


@dataclass
class JobContext:
    """Where a run writes and how it is named, from Hydra's runtime config."""

    output_dir: Path
    label: str  # method choice plus overrides other than seed: what the report groups by
    run_name: str  # every override: unique within a sweep (the W&B run name)
    group: str | None  # the sweep's name for a multirun (the W&B group), None for a single run
    multirun: bool
    overrides: list[str]
    method_choice: str


def job_context(settings: ExperimentConfig) -> JobContext:
    """Name and place this job from Hydra's runtime (or from the settings alone outside Hydra)."""
    name = settings.method.name
    if not HydraConfig.initialized():
        return JobContext(Path(settings.output_dir), name, name, None, False, [], name)
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    method_choice = str(hydra_cfg.runtime.choices.get("method") or name)
    label = run_label(method_choice, overrides)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = settings.logger.wandb_group
    if group is None and multirun:
        group = f"{settings.task_name}-{Path(hydra_cfg.sweep.dir).name}"
    return JobContext(
        output_dir=Path(hydra_cfg.runtime.output_dir),
        label=label,
        run_name=",".join(overrides) or "default",
        group=group,
        multirun=multirun,
        overrides=overrides,
        method_choice=method_choice,
    )


def check_settings(settings: ExperimentConfig, mode: str) -> None:
    """Reject settings that cannot run in ``mode`` (train | bench), before anything loads."""
    if mode == "train" and settings.method.name in BENCH_ONLY_METHODS:
        raise ValueError(
            f"method.name={settings.method.name!r} is a benchmark reference, "
            "usable only with `peftlab bench`; "
            "train with method=lora"
        )
    if mode == "bench":
        check_bench_settings(settings.bench)
        # the benchmark runs exactly its own steps, whatever train.epochs and train.max_steps say
        bench_steps = settings.bench.warmup_steps + settings.bench.steps
        settings = replace(settings, train=replace(settings.train, max_steps=bench_steps))
    check_run_settings(settings)
    if not (settings.data.train_file or settings.data.hf_dataset):
        raise ValueError("no training data: set data.train_file=PATH.jsonl (or data.hf_dataset=NAME)")


def system_info() -> dict[str, Any]:
    """The machine, versions, thread count and peftlab revision a result was measured on."""
    import transformers

    from peftlab import __version__ as peftlab_version

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # changes rounding: some runs are sensitive to it
        "peftlab": peftlab_version,
        "source": source_revision(),
        "cuda_available": torch.cuda.is_available(),
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def release_memory() -> None:
    """Free what the finished job left (cycles, cached CUDA blocks) before the next job of a sweep starts."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError | MemoryError)


def _open_sinks(
    settings: ExperimentConfig, context: JobContext, config: dict[str, Any], system: dict[str, Any]
) -> tuple[list[Any], list[str]]:
    """The optional W&B sink, and notes about why it is absent when it was asked for."""
    if not settings.logger.wandb:
        return [], []
    from peftlab.wandb_logger import WandbRunSpec, open_wandb_sink

    spec = WandbRunSpec(
        project=settings.logger.wandb_project,
        name=context.run_name,
        group=context.group,
        job_type=settings.method.name,
        entity=settings.logger.wandb_entity,
        tags=tuple(settings.tags),
    )
    sink, reason = open_wandb_sink(
        spec, settings.logger.wandb_mode, {**config, "system": system}, context.output_dir
    )
    return ([sink] if sink is not None else []), ([reason] if reason else [])


def run_job(
    cfg: DictConfig, mode: str, runner: Callable[[ExperimentConfig, list[Any]], dict[str, Any]]
) -> float | None:
    """Run one job (``mode`` is train or bench) and write its ``result.json``; failures are recorded there.

    The job holds its folder's lock (``peftlab.run_dir``) from the check for an earlier result to the
    writing of its own. A single run that fails on input the user can fix (a ``ValueError`` such as a bad
    setting, data error or busy folder; an existing result; a non-finite loss) ends with one line,
    ``peftlab <mode>: error: ...``, and exit status 1 instead of a traceback.
    """
    try:
        settings: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        context = job_context(settings)
        try:
            check_settings(settings, mode)
        except ValueError as error:
            if not context.multirun:
                raise  # a single run is refused before its folder is claimed: nothing is written
            runner = _refusal(error)  # a sweep member is recorded as failed and the sweep goes on
        claim = claim_run_dir(context.output_dir) if is_main_process() else contextlib.nullcontext()
        with claim:
            return _run_claimed_job(cfg, mode, runner, settings, context)
    except USER_ERRORS as error:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"peftlab {mode}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _refusal(error: ValueError) -> Callable[[ExperimentConfig, list[Any]], dict[str, Any]]:
    """A runner that fails with ``error`` at once: a sweep member whose settings cannot run."""

    def refuse(settings: ExperimentConfig, sinks: list[Any]) -> dict[str, Any]:
        raise error

    return refuse


def _run_claimed_job(
    cfg: DictConfig,
    mode: str,
    runner: Callable[[ExperimentConfig, list[Any]], dict[str, Any]],
    settings: ExperimentConfig,
    context: JobContext,
) -> float | None:
    result_path = context.output_dir / RESULT_FILE
    if result_path.exists() and not settings.train.resume:
        raise FileExistsError(
            f"{result_path}: this folder already holds a finished run; choose a new hydra.run.dir "
            "(or set train.resume=true to continue that run)"
        )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    context.output_dir.mkdir(parents=True, exist_ok=True)
    # under torchrun / SLURM tasks only rank 0 writes result.json and logs to W&B
    main_rank = is_main_process()
    # taken before the run, so it names the code that ran even if files change meanwhile
    system = system_info()
    sinks, notes = _open_sinks(settings, context, resolved, system) if main_rank else ([], [])
    started = time.time()
    status, error, details, metrics = STATUS_OK, None, None, {}
    failure: BaseException | None = None
    try:
        metrics = runner(settings, sinks)
    except Exception as caught:  # recorded in result.json: a sweep member that fails must not stop the sweep
        failure = caught
        status = STATUS_OOM if _is_out_of_memory(caught) else STATUS_FAILED
        error = f"{type(caught).__name__}: {caught}"
        details = traceback.format_exc()
    result = {
        "schema": RESULT_SCHEMA,
        "status": status,
        "mode": mode,
        "label": context.label,
        "method": settings.method.name,
        "method_choice": context.method_choice,
        "seed": settings.seed,
        "overrides": context.overrides,
        "error": error,
        "traceback": details,
        "notes": notes,
        "metrics": metrics,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_time_s": time.time() - started,
        "system": system,
        "config": resolved,
    }
    if main_rank:
        write_json_atomic(result_path, result, default=_json_default)
    if settings.logger.console and main_rank:
        print_outcome(result, result_path)
    for sink in sinks:
        sink.log_summary({"status": status, **metrics})
        sink.close()
    if failure is not None and not context.multirun:
        raise failure
    failure = None  # its traceback holds the failed run's model and batches
    release_memory()
    if settings.optimized_metric is not None:
        value = metrics.get(settings.optimized_metric)
        return float(value) if isinstance(value, int | float) else None
    return None


class _KeepOpen:
    """Forwards events to a sink but ignores ``close``: the app closes it after logging the result."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def log(self, event: dict[str, Any]) -> None:
        """Forward one event."""
        self.sink.log(event)

    def close(self) -> None:
        """Leave the sink open."""


def step_figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Median step time and tokens/s of a training run from its events (real tokens, no padding).

    Each event has the cumulative ``tokens`` and the step's ``tokens_per_s``, so a step's time is its
    token count over its rate.
    """
    seconds, tokens, previous = [], 0, 0
    for event in events:
        total, rate = event.get("tokens"), event.get("tokens_per_s")
        if not isinstance(total, int) or not isinstance(rate, int | float) or rate <= 0:
            continue
        seconds.append((total - previous) / rate)
        tokens += total - previous
        previous = total
    if not seconds:
        return {}
    return {
        "step_time_ms_p50": statistics.median(seconds) * 1e3,
        "tokens_per_s": tokens / sum(seconds),
        "timed_steps": len(seconds),
    }


HEADLINE_FIGURES = (
    ("valid loss", "final_valid_loss", "{:.4f}"),
    ("tokens/s", "tokens_per_s", "{:.0f}"),
    ("step", "step_time_ms_p50", "{:.1f} ms"),
    ("peak memory", "peak_mem_gib", "{:.3f} GiB"),
)


def print_outcome(result: dict[str, Any], result_path: Path) -> None:
    """One line on stderr: the run's status and headline figures, and where result.json is."""
    from rich.console import Console
    from rich.markup import escape

    metrics = result["metrics"]
    figures = [
        f"{name} {form.format(metrics[key])}"
        for name, key, form in HEADLINE_FIGURES
        if isinstance(metrics.get(key), int | float)
    ]
    status = result["status"] if result["error"] is None else f"{result['status']} ({result['error']})"
    line = f"{result['mode']} {result['label']}: {status}; {', '.join(figures)} -> {result_path}"
    Console(stderr=True, highlight=False, soft_wrap=True).print(escape(line))


def train_runner(settings: ExperimentConfig, sinks: list[Any]) -> dict[str, Any]:
    """Train with ``peftlab.train.train``; add peak memory over the run and step figures from its events."""
    from peftlab.bench import PeakMemory
    from peftlab.logging import EVENTS_FILE, read_events
    from peftlab.train import resolve_device, train

    memory = PeakMemory(resolve_device(settings.train.device))
    memory.reset()
    summary = train(settings, sinks=[_KeepOpen(sink) for sink in sinks])
    if not is_main_process():  # rank 0 reads the events and writes the result
        return summary
    events = read_events(Path(settings.output_dir) / EVENTS_FILE)
    return {**memory.read(), **step_figures(events), **summary}


def bench_runner(settings: ExperimentConfig, sinks: list[Any]) -> dict[str, Any]:
    """Benchmark with ``peftlab.bench.run_benchmark``."""
    from peftlab.bench import run_benchmark

    return run_benchmark(settings, sinks)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="config")
def train_main(cfg: DictConfig) -> float | None:
    """``peftlab train [overrides] [-m]``: train; events.jsonl and result.json go to Hydra's output folder."""
    return run_job(cfg, "train", train_runner)


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="bench")
def bench_main(cfg: DictConfig) -> float | None:
    """``peftlab bench [overrides] [-m]``: timed steps after warm-up, written to result.json."""
    return run_job(cfg, "bench", bench_runner)
