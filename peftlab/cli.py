"""The ``peftlab`` command: a thin dispatcher.

- ``peftlab train|bench [overrides]``: the Hydra apps in ``peftlab.hydra_app`` (``train_main``,
  ``bench_main``; they read ``sys.argv``). Without that module, ``train`` takes ``key=value`` overrides of
  ``RunConfig`` and calls ``peftlab.train.train``.
- ``peftlab report ...``: ``peftlab.report.main``.
- ``peftlab data check FILE``: validate a JSONL file (each problem as ``FILE:LINE: problem``; exit 1 on errors).
- ``peftlab generate RUN_DIR --prompt TEXT`` (or ``--messages FILE``): answer with the tuned model.
- ``peftlab compare RUN_DIR --prompts FILE``: base vs tuned answers as a markdown table.
- ``peftlab export RUN_DIR OUT_DIR``: LoRA merged into the base, saved as a ``transformers`` checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.generation import GenerationOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# command -> (module, function); the function parses sys.argv itself (Hydra) or takes argv.
DELEGATED: dict[str, tuple[str, str, bool]] = {
    "train": ("peftlab.hydra_app", "train_main", False),
    "bench": ("peftlab.hydra_app", "bench_main", False),
    "report": ("peftlab.report", "main", True),
}
USAGE = """usage: peftlab COMMAND ...

commands:
  train [key=value ...]        fine-tune (Hydra overrides; `peftlab train --help`)
  bench [key=value ...]        benchmark steps: memory, tokens/s
  report SWEEP_DIR             compare the runs of a sweep
  data check FILE              validate a JSONL data file
  generate RUN_DIR --prompt T  answer with a tuned model
  compare RUN_DIR --prompts F  base vs tuned answers, as markdown
  export RUN_DIR OUT_DIR       merge LoRA and save a transformers checkpoint
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``peftlab`` command and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return EXIT_OK if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command in DELEGATED:
        return _delegate(command, rest)
    handlers: dict[str, Callable[[list[str]], int]] = {
        "data": _data,
        "generate": _generate,
        "compare": _compare,
        "export": _export,
    }
    if command not in handlers:
        print(f"peftlab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return handlers[command](rest)
    except (ValueError, FileExistsError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        print(f"peftlab {command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _delegate(command: str, rest: list[str]) -> int:
    module_name, function_name, takes_argv = DELEGATED[command]
    module = importlib.import_module(module_name)
    function = getattr(module, function_name)
    if takes_argv:
        return int(function(rest) or 0)
    sys.argv = [f"peftlab {command}", *rest]
    function()
    return EXIT_OK


# --- data check ------------------------------------------------------------------------------------


def _data(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peftlab data", description="Work with training data files.")
    commands = parser.add_subparsers(dest="action", required=True)
    check = commands.add_parser("check", help="validate a JSONL file before training")
    check.add_argument("file", help="the JSONL file")
    check.add_argument("--format", default="auto", choices=["auto", "chat", "completion", "classification"])
    check.add_argument("--max-length", type=int, default=256, help="tokens per example (data.max_length)")
    check.add_argument(
        "--truncation", action="store_true", help="report over-long examples as warnings (data.truncation)"
    )
    check.add_argument(
        "--truncation-side",
        default="right",
        choices=["right", "left"],
        help="left keeps the end of each example, its completion (data.truncation_side)",
    )
    check.add_argument(
        "--tokenizer", default=None, help="HF id or path (default: the byte tokenizer of the presets)"
    )
    check.add_argument("--text-field", default="text")
    check.add_argument(
        "--text-pair-field", default=None, help="the second text of sentence-pair classification examples"
    )
    check.add_argument("--label-field", default="label")
    check.add_argument("--num-labels", type=int, default=2)
    options = parser.parse_args(args)
    from peftlab.data.check import DataOptions, check_file
    from peftlab.tokenization import load_tokenizer

    tokenizer = load_tokenizer(options.tokenizer)
    settings = DataOptions(
        format=options.format,
        max_length=options.max_length,
        truncation=options.truncation,
        truncation_side=options.truncation_side,
        text_field=options.text_field,
        label_field=options.label_field,
        num_labels=options.num_labels,
        text_pair_field=options.text_pair_field,
    )
    report = check_file(options.file, tokenizer, settings)
    print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


# --- generate / compare / export -------------------------------------------------------------------


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat-template", action="store_true", help="continue the prompt text as is")


def _generation_options(options: argparse.Namespace) -> GenerationOptions:
    from peftlab.generation import GenerationOptions

    return GenerationOptions(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        use_chat_template=not options.no_chat_template,
    )


def _generate(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peftlab generate", description="Answer with a run's tuned model.")
    parser.add_argument("run_dir", help="a run folder (output_dir of `peftlab train`)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user's message")
    source.add_argument("--messages", help='a JSON file: [{"role": ..., "content": ...}, ...]')
    parser.add_argument("--no-adapter", action="store_true", help="answer with the base model only")
    _add_generation_options(parser)
    options = parser.parse_args(args)
    from peftlab.builder import load_run
    from peftlab.generation import encode_prompt, generate_text, read_messages

    generation = _generation_options(options)
    loaded = load_run(options.run_dir, with_adapter=not options.no_adapter)
    if options.messages:
        ids = encode_prompt(loaded.tokenizer, messages=read_messages(options.messages))
    else:
        ids = encode_prompt(
            loaded.tokenizer, prompt=options.prompt, use_chat_template=generation.use_chat_template
        )
    print(generate_text(loaded.model, loaded.tokenizer, ids, generation))
    return EXIT_OK


def _compare(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab compare", description="Base vs tuned answers, as markdown."
    )
    parser.add_argument("run_dir")
    parser.add_argument(
        "--prompts", required=True, help=".txt (one per line) or .jsonl ({prompt} or {messages})"
    )
    parser.add_argument("--out", default=None, help="markdown file to write (default: print)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_generation_options(parser)
    options = parser.parse_args(args)
    from pathlib import Path

    from peftlab.generation import compare_run, comparison_markdown, read_prompts

    if options.out and Path(options.out).exists() and not options.overwrite:
        raise FileExistsError(f"{options.out} exists; pass --overwrite to replace it or choose another --out")
    generation = _generation_options(options)
    rows = compare_run(options.run_dir, read_prompts(options.prompts), generation)
    markdown = comparison_markdown(rows, str(options.run_dir), generation)
    if options.out:
        Path(options.out).write_text(markdown, encoding="utf-8")
        print(f"wrote {options.out}")
    else:
        print(markdown, end="")
    return EXIT_OK


def _export(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="peftlab export", description="Merge LoRA and save a transformers checkpoint."
    )
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    options = parser.parse_args(args)
    from peftlab.export import export_merged

    out = export_merged(options.run_dir, options.out_dir, overwrite=options.overwrite)
    print(f"wrote {out} (load it with transformers' AutoModelForCausalLM.from_pretrained)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
