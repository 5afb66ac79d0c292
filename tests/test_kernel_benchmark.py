"""The kernel benchmark's CPU smoke run: tiny shapes, torch/PEFT rows only, results written where asked."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from peftlab.provenance import revision_text

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lora_kernels.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lora_kernels_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour (no Triton rows)")
def test_quick_run_writes_csv_and_markdown_without_triton_rows(tmp_path: Path) -> None:
    benchmark = load_benchmark()
    argv = [
        "--quick",
        "--shape",
        "32:16",
        "--tokens",
        "24",
        "--iters",
        "2",
        "--dropouts",
        "0,0.1",
        "--out",
        str(tmp_path),
    ]
    assert benchmark.main(argv) == 0
    (csv_path,) = tmp_path.glob("lora_kernels_*.csv")
    (md_path,) = tmp_path.glob("lora_kernels_*.md")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["provider"] for row in rows} == {"base", "torch", "peft"}
    assert {(row["dropout"], row["in"], row["out"], row["tokens"]) for row in rows} == {
        ("0.0", "32", "16", "24"),
        ("0.1", "32", "16", "24"),
    }
    assert all(float(row["median_ms"]) > 0 and row["device"].startswith("CPU") for row in rows)
    report = md_path.read_text()
    assert "triton rows skipped: no CUDA device" in report and "--quick" in report
    assert revision_text() in report  # the peftlab revision that made the numbers
    # a second run must not replace the first one's files
    before = csv_path.read_text()
    assert benchmark.main(argv) == 2
    assert csv_path.read_text() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_full_run_refuses_without_cuda(tmp_path: Path) -> None:
    assert load_benchmark().main(["--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_flop_count_and_target_summary() -> None:
    benchmark = load_benchmark()
    shape = benchmark.Shape("s", 8192, 4096, 4096)
    base = benchmark.lora_flops(shape, 16, with_adapter=False)
    assert base == 4 * 8192 * 4096 * 4096
    assert benchmark.lora_flops(shape, 16, with_adapter=True) / base == pytest.approx(
        1 + 1.5 * 16 * 8192 / 4096**2
    )
    ratios = [
        {"shape": "a", "rank": 16, "dropout": 0.0, "ours/base": 1.21, "peft/ours": 1.5},
        {"shape": "b", "rank": 16, "dropout": 0.0, "ours/base": 1.0, "peft/ours": 1.5},
        {"shape": "a", "rank": 8, "dropout": 0.0, "ours/base": 9.0, "peft/ours": 9.0},
    ]
    summary = {name: measured for name, measured, _ in benchmark.target_summary(ratios)}
    assert summary == pytest.approx({"ours/base p=0": 1.1, "peft/ours": 1.5})


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs the GPU-only code paths in the interpreter")
def test_triton_provider_and_numerics_check_run_in_the_interpreter() -> None:
    """The code the GPU run uses for the ``triton`` rows and the float64 check, on a tiny shape."""
    benchmark = load_benchmark()
    shape, cpu = benchmark.Shape("t", 24, 32, 16), torch.device("cpu")
    errors = benchmark.fused_kernel_errors(shape, 8, 0.1, torch.float32, cpu)
    assert set(errors) == {"Y", "dX", "dA", "dB"} and max(errors.values()) < 1e-5
    sets = benchmark.make_input_sets(shape, 8, torch.float32, torch.float32, cpu, copies=2)
    times = benchmark.time_step(benchmark.provider_step("triton", 8, 0.1), sets, warmup=0, iters=2)
    assert len(times) == 2 and all(t > 0 for t in times)
