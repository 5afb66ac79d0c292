"""Two ranks under ``torchrun`` (gloo, CPU) against one process with the same global batch.

One ``torchrun --nproc_per_node=2`` launch runs every scenario in turn (this file is its worker script):
LoRA and full fine-tuning under DDP and FSDP2, prompt and prefix tuning under both, a benchmark, and an
FSDP LoRA run whose rank 0 is killed (SIGKILL) at step 5, after its step-4 checkpoint. A second launch
resumes that run through the real command line (``-m peftlab.cli train ... train.resume=true``). The
single-process references train in this process with twice the per-rank batch. Loss curves must agree
within 1e-5 (fp32); saved adapters must hold the same tensors as the single-process ones.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

NUM_RANKS = 2
STEPS = 6
KILL_AFTER_STEP = 5  # the step-4 checkpoint is written, step 5 is logged, then rank 0 dies
LAUNCH_TIMEOUT_S = 420
TOLERANCE = 1e-5
# Trained weights: AdamW divides each gradient by its running RMS, which turns last-bit differences in
# how the ranks sum gradients into ~1e-5 differences for elements whose gradients are tiny. A missing or
# doubled rank contribution moves weights by ~1e-2 (lr), far outside this.
WEIGHT_TOLERANCE = 1e-4
# The embedded chat data (40 training conversations, 8 validation ones), fp32 on the CPU, an evaluation
# half-way and at the end. Per rank: micro-batches of 2 with 2 accumulated (LoRA) or batches of 4 (full):
# a global batch of 8, so 5 steps per epoch, and step 6 starts the second (reshuffled) epoch.
COMMON = [
    "model=tiny_llama",
    "data=chat_example",
    "logger.console=false",
    "seed=0",
    "train.device=cpu",
    "train.precision=fp32",
    f"train.max_steps={STEPS}",
    "train.eval_every=3",
]
LORA_RANK = ["method=lora", "train.batch_size=2", "train.grad_accum=2"]
LORA_SINGLE = ["method=lora", "train.batch_size=4", "train.grad_accum=2"]
FULL_RANK = ["method=full", "train.batch_size=4", "train.lr=1e-3"]
FULL_SINGLE = ["method=full", "train.batch_size=8", "train.lr=1e-3"]
PROMPT_RANK = ["train.batch_size=4", "method.num_virtual_tokens=4"]
KILLED_RUN = [*COMMON, *LORA_RANK, "train.strategy=fsdp", "train.checkpoint_every=2"]

TWO_RANK_SCENARIOS: dict[str, list[str]] = {
    "ddp_lora": [*COMMON, *LORA_RANK, "train.strategy=ddp"],
    "fsdp_lora": [*COMMON, *LORA_RANK, "train.strategy=fsdp"],
    "ddp_full": [*COMMON, *FULL_RANK, "train.strategy=ddp"],
    "fsdp_full": [*COMMON, *FULL_RANK, "train.strategy=fsdp"],
    "ddp_prompt_tuning": [*COMMON, *PROMPT_RANK, "method=prompt_tuning", "train.strategy=ddp"],
    "fsdp_prompt_tuning": [*COMMON, *PROMPT_RANK, "method=prompt_tuning", "train.strategy=fsdp"],
    "ddp_prefix_tuning": [*COMMON, *PROMPT_RANK, "method=prefix_tuning", "train.strategy=ddp"],
    "fsdp_prefix_tuning": [*COMMON, *PROMPT_RANK, "method=prefix_tuning", "train.strategy=fsdp"],
}
SINGLE_PROCESS_SCENARIOS: dict[str, list[str]] = {
    "single_lora": [*COMMON, *LORA_SINGLE],
    "single_full": [*COMMON, *FULL_SINGLE],
}
# `peftlab bench` (one warm-up step, two timed ones) on the training batches: 4 per rank vs 8 in one process.
BENCH = [
    "model=tiny_llama",
    "data=chat_example",
    "logger.console=false",
    "seed=0",
    "train.device=cpu",
    "train.precision=fp32",
    "method=lora",
    "bench.warmup_steps=1",
    "bench.steps=2",
    "bench.data=train",
]
BENCH_FIGURES = "bench_figures.json"


# --- running ---------------------------------------------------------------------------------------


def compose_settings(overrides: list[str], output_dir: Path, config_name: str = "config") -> Any:
    """The run settings ``peftlab train <overrides>`` (``bench`` with ``config_name="bench"``) would use,
    writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from peftlab.hydra_app import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name, overrides=[*overrides, f"output_dir={output_dir}"])
    return OmegaConf.to_object(cfg)


class KillAfterStep:
    """An event sink that SIGKILLs its own process once ``step`` is logged (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log(self, event: dict[str, Any]) -> None:
        if event.get("step") == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        pass


def run_bench(overrides: list[str], output_dir: Path) -> None:
    """``run_benchmark`` as ``peftlab bench`` would; rank 0 writes the figures to ``bench_figures.json``."""
    from peftlab.bench import run_benchmark
    from peftlab.distributed import is_main_process

    figures = run_benchmark(compose_settings(overrides, output_dir, "bench"))
    if is_main_process():
        (output_dir / BENCH_FIGURES).write_text(json.dumps(figures), encoding="utf-8")


def worker_main(spec_path: str) -> None:
    """The torchrun worker: every run of the spec in turn, in one process group."""
    from peftlab.train import train

    for run in json.loads(Path(spec_path).read_text(encoding="utf-8")):
        if run.get("bench"):
            run_bench(run["overrides"], Path(run["output_dir"]))
        else:
            sinks = [KillAfterStep(run["kill_after_step"])] if run.get("kill_after_step") else []
            train(compose_settings(run["overrides"], Path(run["output_dir"])), sinks=sinks)
        print(f"finished {run['name']} on rank {os.environ.get('RANK')}", flush=True)


def torchrun(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 <arguments>`` (a free port, one thread per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={NUM_RANKS}",
        *arguments,
    ]
    try:
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"torchrun did not finish within {LAUNCH_TIMEOUT_S}s:\n"
            f"{_tail(str(error.stdout))}{_tail(str(error.stderr))}"
        )


def _tail(text: str | None, lines: int = 60) -> str:
    return "\n".join((text or "").splitlines()[-lines:]) + "\n"


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every two-rank scenario trained in one launch; the last one (``killed``) dies after step 4."""
    root = tmp_path_factory.mktemp("two_ranks")
    runs = [
        {"name": name, "overrides": overrides, "output_dir": str(root / name)}
        for name, overrides in TWO_RANK_SCENARIOS.items()
    ]
    runs.append(
        {
            "name": "bench",
            "overrides": [*BENCH, "train.strategy=fsdp", "train.batch_size=4"],
            "output_dir": str(root / "bench"),
            "bench": True,
        }
    )
    runs.append(
        {
            "name": "killed",
            "overrides": KILLED_RUN,
            "output_dir": str(root / "killed"),
            "kill_after_step": KILL_AFTER_STEP,
        }
    )
    spec = root / "spec.json"
    spec.write_text(json.dumps(runs), encoding="utf-8")
    result = torchrun([__file__, str(spec)], cwd=root)
    unfinished = [name for name in TWO_RANK_SCENARIOS if not (root / name / "summary.json").is_file()]
    unfinished += [] if (root / "bench" / BENCH_FIGURES).is_file() else ["bench"]
    if unfinished or result.returncode == 0:
        pytest.fail(
            f"runs {unfinished} did not finish (exit {result.returncode}; the killed run must fail):\n"
            f"{_tail(result.stdout)}{_tail(result.stderr)}"
        )
    return {run["name"]: Path(run["output_dir"]) for run in runs}


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The references: one process, the same global batch."""
    from peftlab.train import train

    root = tmp_path_factory.mktemp("one_process")
    for name, overrides in SINGLE_PROCESS_SCENARIOS.items():
        train(compose_settings(overrides, root / name))
    run_bench([*BENCH, "train.batch_size=8"], root / "single_bench")
    return {name: root / name for name in [*SINGLE_PROCESS_SCENARIOS, "single_bench"]}


@dataclass
class Resumed:
    """The killed run after its resumption, and what its folder held before."""

    run_dir: Path
    steps_before: list[int]  # the steps logged before rank 0 was killed
    checkpoints_before: list[str]
    checkpoint_mtime_ns: int  # of step-000004's manifest when the run was killed


@pytest.fixture(scope="module")
def resumed_run(two_rank_runs: dict[str, Path]) -> Resumed:
    """The killed run, resumed under two ranks by ``torchrun -m peftlab.cli train ... train.resume=true``."""
    run_dir = two_rank_runs["killed"]
    steps_before = [event["step"] for event in events(run_dir)]
    checkpoints_before = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    mtime = (run_dir / "checkpoints/step-000004/manifest.json").stat().st_mtime_ns
    result = torchrun(
        ["-m", "peftlab.cli", "train", *KILLED_RUN, f"hydra.run.dir={run_dir}", "train.resume=true"],
        cwd=run_dir.parent,
    )
    if result.returncode != 0:
        pytest.fail(
            f"the resumed run failed (exit {result.returncode}):\n"
            f"{_tail(result.stdout)}{_tail(result.stderr)}"
        )
    return Resumed(run_dir, steps_before, checkpoints_before, mtime)


# --- reading results -------------------------------------------------------------------------------


def events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


CURVE_FIELDS = (
    "train_loss",
    "train_mean_token_accuracy",
    "grad_norm",
    "lr",
    "valid_loss",
    "valid_mean_token_accuracy",
)


def assert_same_curve(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same steps, token counts and evaluation points; every figure within 1e-5."""
    assert [e["step"] for e in actual] == [e["step"] for e in expected] == list(range(1, STEPS + 1))
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine["tokens"] == theirs["tokens"], mine["step"]
        assert set(mine) & set(CURVE_FIELDS) == set(theirs) & set(CURVE_FIELDS), mine["step"]
        for field in set(theirs) & set(CURVE_FIELDS):
            assert mine[field] == pytest.approx(theirs[field], rel=TOLERANCE, abs=TOLERANCE), (
                mine["step"],
                field,
            )


def assert_same_tensors(actual_file: Path, expected_file: Path) -> None:
    actual, expected = load_file(str(actual_file)), load_file(str(expected_file))
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and actual[key].shape == tensor.shape, key
        torch.testing.assert_close(actual[key], tensor, rtol=WEIGHT_TOLERANCE, atol=WEIGHT_TOLERANCE, msg=key)


# --- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "reference"),
    [
        ("ddp_lora", "single_lora"),
        ("fsdp_lora", "single_lora"),
        ("ddp_full", "single_full"),
        ("fsdp_full", "single_full"),
    ],
)
def test_two_ranks_follow_the_single_process_loss_curve(
    two_rank_runs: dict[str, Path], single_process_runs: dict[str, Path], run: str, reference: str
) -> None:
    assert_same_curve(events(two_rank_runs[run]), events(single_process_runs[reference]))
    summary = json.loads((two_rank_runs[run] / "summary.json").read_text())
    expected = json.loads((single_process_runs[reference] / "summary.json").read_text())
    assert summary["final_valid_loss"] == pytest.approx(expected["final_valid_loss"], rel=TOLERANCE)
    assert (summary["trainable_params"], summary["total_params"]) == (
        expected["trainable_params"],
        expected["total_params"],
    )


@pytest.mark.parametrize(
    ("run", "reference", "weights"),
    [
        ("ddp_lora", "single_lora", "adapter_model.safetensors"),
        ("fsdp_lora", "single_lora", "adapter_model.safetensors"),
        ("fsdp_full", "single_full", "model.safetensors"),
    ],
)
def test_adapter_saved_by_two_ranks_equals_the_single_process_one(
    two_rank_runs: dict[str, Path],
    single_process_runs: dict[str, Path],
    run: str,
    reference: str,
    weights: str,
) -> None:
    adapter, expected = two_rank_runs[run] / "adapter", single_process_runs[reference] / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text()) == json.loads(
        (expected / "adapter_config.json").read_text()
    )
    assert_same_tensors(adapter / weights, expected / weights)


def test_only_rank_zero_writes_events_and_results(two_rank_runs: dict[str, Path]) -> None:
    for name in TWO_RANK_SCENARIOS:
        steps = [event["step"] for event in events(two_rank_runs[name])]
        assert steps == list(range(1, STEPS + 1)), name  # two writers would repeat every step
        assert not list(two_rank_runs[name].glob("**/*.tmp*")), name


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_and_prefix_tuning_train_alike_under_ddp_and_fsdp(
    two_rank_runs: dict[str, Path], method: str
) -> None:
    import peftlab
    from peftlab.builder import load_run_base

    ddp, fsdp = events(two_rank_runs[f"ddp_{method}"]), events(two_rank_runs[f"fsdp_{method}"])
    assert_same_curve(fsdp, ddp)
    assert all(math.isfinite(event["train_loss"]) for event in ddp)
    assert ddp[-1]["train_loss"] < ddp[0]["train_loss"]
    for strategy in ("ddp", "fsdp"):
        _, _, base = load_run_base(two_rank_runs[f"{strategy}_{method}"])
        loaded = peftlab.load_adapter(base, two_rank_runs[f"{strategy}_{method}"] / "adapter")
        assert (
            type(loaded.method).__name__
            == {"prompt_tuning": "PromptTuning", "prefix_tuning": "PrefixTuning"}[method]
        )
    assert_same_tensors(
        two_rank_runs[f"fsdp_{method}"] / "adapter/adapter_model.safetensors",
        two_rank_runs[f"ddp_{method}"] / "adapter/adapter_model.safetensors",
    )


def test_run_killed_after_a_checkpoint_resumes_on_the_same_curve(
    resumed_run: Resumed, single_process_runs: dict[str, Path]
) -> None:
    run_dir = resumed_run.run_dir
    assert resumed_run.steps_before == list(range(1, KILL_AFTER_STEP + 1))
    assert resumed_run.checkpoints_before == ["step-000002", "step-000004"]
    # resumed from step 4, not started afresh (which would have rewritten step-000004)
    assert (
        run_dir / "checkpoints/step-000004/manifest.json"
    ).stat().st_mtime_ns == resumed_run.checkpoint_mtime_ns
    assert_same_curve(events(run_dir), events(single_process_runs["single_lora"]))
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-000004", "step-000006"]  # keep_checkpoints=2
    manifest = json.loads((run_dir / "checkpoints/step-000006/manifest.json").read_text())
    assert manifest["layout"] == "sharded"
    assert {name for name in manifest["files"] if name.endswith(".distcp")} == {
        "sharded/__0_0.distcp",
        "sharded/__1_0.distcp",
    }
    assert_same_tensors(
        run_dir / "adapter/adapter_model.safetensors",
        single_process_runs["single_lora"] / "adapter/adapter_model.safetensors",
    )


def test_resumed_command_line_run_writes_one_result(resumed_run: Resumed) -> None:
    run_dir = resumed_run.run_dir
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["metrics"]["steps"] == STEPS
    assert result["metrics"].get("world_size") == NUM_RANKS
    assert len(list(run_dir.glob("**/result.json"))) == 1


def test_benchmark_reports_global_tokens_and_memory_per_rank(
    two_rank_runs: dict[str, Path], single_process_runs: dict[str, Path]
) -> None:
    figures = json.loads((two_rank_runs["bench"] / BENCH_FIGURES).read_text())
    single = json.loads((single_process_runs["single_bench"] / BENCH_FIGURES).read_text())
    assert (figures["world_size"], single["world_size"]) == (NUM_RANKS, 1)
    # both ranks' tokens are counted: the same global batches as the single process (each rank pads its
    # share to its own longest example, so only the padding-inclusive count may be smaller)
    for key in ("timed_tokens", "timed_tokens_trained"):
        assert figures[key] == single[key], key
    assert figures["timed_tokens"] < figures["timed_tokens_total"] <= single["timed_tokens_total"]
    assert figures["tokens_per_s"] == pytest.approx(figures["timed_tokens"] / figures["timed_seconds"])
    assert figures["tokens_per_s_per_rank"] == pytest.approx(figures["tokens_per_s"] / NUM_RANKS)
    per_rank = figures["peak_mem_gib_per_rank"]
    assert len(per_rank) == NUM_RANKS and all(value > 0 for value in per_rank)
    assert figures["peak_mem_gib"] == max(per_rank)
    assert figures["final_train_loss"] == pytest.approx(
        single["final_train_loss"], rel=TOLERANCE, abs=TOLERANCE
    )
    assert len(events(two_rank_runs["bench"])) == 3  # one writer: warm-up + timed steps once


if __name__ == "__main__":
    worker_main(sys.argv[1])
