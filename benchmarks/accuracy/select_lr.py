"""Pick each method's learning rate from a validation sweep: the highest mean ``task_accuracy``.

python benchmarks/accuracy/select_lr.py runs/accuracy/minilm_bbc_news/valid lora
-> prints the chosen learning rate (ties go to the smaller one); exits 2 when no run of the method is ok.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METRIC = "task_accuracy"


def validation_scores(sweep_dir: Path, method: str) -> dict[float, float]:
    """Mean validation accuracy per learning rate of ``method``'s finished runs under ``sweep_dir``
    (``method`` is a method config name, e.g. ``lora`` or ``prefix_tuning_mlp``)."""
    scores: dict[float, list[float]] = defaultdict(list)
    for path in sorted(sweep_dir.rglob("result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        value = result.get("metrics", {}).get(METRIC)
        if (
            result.get("status") != "ok"
            or method_key(result) != method
            or not isinstance(value, int | float)
        ):
            continue
        scores[float(result["config"]["train"]["lr"])].append(float(value))
    return {lr: statistics.fmean(values) for lr, values in scores.items()}


def method_key(result: dict) -> str:
    """What a run is grouped by: the method config chosen (``prefix_tuning_mlp``), else the method's name."""
    return str(result.get("method_choice") or result.get("method"))


def best_lr(scores: dict[float, float]) -> float:
    """The learning rate with the highest score; the smaller one on a tie."""
    return max(sorted(scores), key=lambda lr: scores[lr])


def main() -> int:
    """Print the chosen learning rate, and every candidate's score on stderr."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("method")
    args = parser.parse_args()
    scores = validation_scores(args.sweep_dir, args.method)
    if not scores:
        print(f"error: no finished {args.method} run with {METRIC} under {args.sweep_dir}", file=sys.stderr)
        return 2
    for lr, score in sorted(scores.items()):
        print(f"{args.method} lr={lr:g}: valid {METRIC} {score:.4f}", file=sys.stderr)
    print(f"{best_lr(scores):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
