"""One markdown table of an accuracy task run by ``run_minilm_task.sh`` or ``run_smollm2_task.sh``.

    python benchmarks/accuracy/task_table.py runs/accuracy/minilm_strategyqa \\
        [--baseline "untuned (zero-shot)=runs/accuracy/smollm2_pang_lee/zero_shot.json"]

Reads ``SWEEP/valid`` (the learning-rate sweep) and ``SWEEP/test`` (the chosen rate, every seed): per
method, each candidate rate's validation accuracy, the chosen rate, the test accuracy per seed, mean ±
std and the difference to full fine-tuning. A baseline is a JSON file with an ``accuracy`` field.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_lr import best_lr, method_key, validation_scores  # a script beside this one

METHODS = ("full", "lora", "prefix_tuning", "prefix_tuning_mlp", "prefix_tuning_real_tokens", "prompt_tuning")


def test_accuracies(sweep_dir: Path) -> dict[str, dict[int, float]]:
    """Test ``task_accuracy`` per method config and seed of the finished runs under ``sweep_dir``."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(sweep_dir.rglob("result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        value = result.get("metrics", {}).get("task_accuracy")
        if result.get("status") == "ok" and isinstance(value, int | float):
            found[method_key(result)][int(result["seed"])] = float(value)
    return found


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(sweep_dir: Path, baselines: list[tuple[str, float]], test: str = "test") -> str:
    """The markdown table of one task's sweep folder (test runs in its subfolder ``test``)."""
    tests = test_accuracies(sweep_dir / test)
    full = tests.get("full")
    full_mean = mean_std(list(full.values()))[0] if full else None
    lines = [
        "| method | valid accuracy per lr | chosen lr | test accuracy per seed | mean ± std | − full |",
        "|---|---|---|---|---|---|",
    ]
    for method in [m for m in METHODS if m in tests] + sorted(set(tests) - set(METHODS)):
        scores = validation_scores(sweep_dir / "valid", method)
        sweep = ", ".join(f"{lr:g}: {score:.3f}" for lr, score in sorted(scores.items())) or "—"
        chosen = f"{best_lr(scores):g}" if scores else "—"
        per_seed = tests[method]
        mean, std = mean_std(list(per_seed.values()))
        seeds = ", ".join(f"{seed}: {value:.3f}" for seed, value in sorted(per_seed.items()))
        gap = f"{mean - full_mean:+.3f}" if full_mean is not None and method != "full" else "—"
        lines.append(f"| {method} | {sweep} | {chosen} | {seeds} | {mean:.3f} ± {std:.3f} | {gap} |")
    for name, value in baselines:
        gap = f"{value - full_mean:+.3f}" if full_mean is not None else "—"
        lines.append(f"| {name} | — | — | — | {value:.3f} | {gap} |")
    return "\n".join(lines)


def parse_baseline(text: str) -> tuple[str, float]:
    """``NAME=FILE.json`` -> (NAME, the file's ``accuracy``)."""
    name, _, file = text.partition("=")
    if not file:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.json, got {text!r}")
    data = json.loads(Path(file).read_text(encoding="utf-8"))
    if "accuracy" not in data:
        raise argparse.ArgumentTypeError(f"{file}: no 'accuracy' field")
    return name, float(data["accuracy"])


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--baseline", type=parse_baseline, action="append", default=[])
    parser.add_argument("--test", default="test", help="subfolder of the test runs (default: test)")
    args = parser.parse_args()
    print(table(args.sweep_dir, args.baseline, args.test))


if __name__ == "__main__":
    main()
