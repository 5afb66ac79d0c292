"""MiniLM Pang & Lee runs against the ``peft`` anchor figures, as a markdown table (read from result.json).

    python benchmarks/accuracy/anchor_table.py runs/accuracy/minilm_pang_lee [--step-times FILE.csv] \
        [--peft-reference runs/accuracy/peft_reference_pang_lee]

One row per method: test accuracy per seed and mean ± sample std, the anchor's accuracy and the difference,
trainable parameters, and (with ``--step-times``, the CSV of ``step_time.py``) the interleaved per-step
time of ours against peft's; with ``--peft-reference`` (the folders of ``peft_reference.py``) the accuracy
of ``peft``'s implementation trained with the same recipe and batches. Every figure comes from the files; nothing is typed in by hand except the
anchor's published accuracies below.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

# The peft 0.21.2 anchor runs (offline-assets notes): MiniLM-L6, 3,000 / 1,000 split, max_len 64, batch 32,
# 2 epochs, AdamW; test accuracy and trainable parameters.
ANCHOR = {
    "full": (0.812, 22_713_986, 5e-5),
    "lora": (0.807, 74_498, 1e-3),
    "prefix_tuning": (0.786, 92_930, 1e-2),
    "prompt_tuning": (0.718, 8_450, 3e-2),
}


def finished_runs(sweep_dir: Path) -> dict[str, list[dict]]:
    """The finished (status ok) results under ``sweep_dir``, by method, sorted by seed."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(sweep_dir.rglob("result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("status") == "ok":
            runs.setdefault(result["method"], []).append(result)
    return {method: sorted(items, key=lambda r: r["seed"]) for method, items in runs.items()}


def read_step_times(path: Path | None) -> dict[str, dict[str, str]]:
    """Rows of ``step_time.py``'s CSV by method ({} without a file)."""
    if path is None:
        return {}
    with path.open(encoding="utf-8") as stream:
        return {row["method"]: row for row in csv.DictReader(stream)}


def accuracy_summary(results: list[dict]) -> str:
    """``mean ± std`` of the runs' ``task_accuracy`` (``value (seed s)`` for one run, ``—`` for none)."""
    values = [r["metrics"]["task_accuracy"] for r in results]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (seed {results[0]['seed']})"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def table(
    runs: dict[str, list[dict]],
    step_times: dict[str, dict[str, str]],
    reference: dict[str, list[dict]] | None = None,
) -> str:
    """The markdown comparison table."""
    lines = [
        "| method | lr | seeds | test accuracy per seed | mean ± std | peft anchor | mean − anchor "
        "| peft, same recipe and batches | trainable params (ours / peft) | step p50 ms, ours / peft (ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, (anchor_accuracy, anchor_params, anchor_lr) in ANCHOR.items():
        results = runs.get(method, [])
        values = [r["metrics"]["task_accuracy"] for r in results]
        if values:
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            per_seed = ", ".join(f"{r['seed']}: {v:.3f}" for r, v in zip(results, values, strict=True))
            summary = f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f} (1 seed)"
            delta = f"{mean - anchor_accuracy:+.3f}"
            lr = f"{results[0]['config']['train']['lr']:g}"
            params = f"{results[0]['metrics']['trainable_params']:,} / {anchor_params:,}"
        else:
            per_seed, summary, delta, lr, params = (
                "not run",
                "—",
                "—",
                f"{anchor_lr:g}",
                f"— / {anchor_params:,}",
            )
        timing = step_times.get(method)
        speed = "—"
        if timing:
            speed = f"wall {timing['ours_step_ms_p50']} / {timing['peft_step_ms_p50']} ({timing['ratio_ours_over_peft']})"
            if timing.get("cpu_ratio_ours_over_peft"):
                speed += (
                    f"; CPU {timing['ours_cpu_step_ms_p50']} / {timing['peft_cpu_step_ms_p50']}"
                    f" ({timing['cpu_ratio_ours_over_peft']})"
                )
        row = [
            method,
            lr,
            str(len(values)),
            per_seed,
            summary,
            f"{anchor_accuracy:.3f}",
            delta,
            accuracy_summary((reference or {}).get(method, [])),
            params,
            speed,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the table for a sweep folder."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--step-times", type=Path, default=None)
    parser.add_argument("--peft-reference", type=Path, default=None)
    args = parser.parse_args()
    reference = finished_runs(args.peft_reference) if args.peft_reference else None
    print(table(finished_runs(args.sweep_dir), read_step_times(args.step_times), reference), end="")


if __name__ == "__main__":
    main()
