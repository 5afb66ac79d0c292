"""The training recipe: one loop for every method (LoRA, prompt tuning, prefix tuning, full fine-tuning).

Read it top to bottom:

1. ``prepare_run(cfg) -> RunParts``: seed, tokenizer, model (method applied, or continued from
   ``train.init_from``), checked data and loaders, AdamW over the trainable parameters only, and the
   LR schedule (linear warm-up, then cosine / linear decay or constant).
2. ``train_step(parts, batch) -> StepStats``: one optimiser step over one batch or a list of
   micro-batches (gradient accumulation). The loss is the mean over all target tokens of the step
   (token-count normalised across micro-batches), computed from logits aligned to the labels.
   bf16/fp16 autocast when asked (``train.precision``), then clipping, the step and the schedule.
3. ``evaluate(parts) -> dict``: validation loss and mean token accuracy (accuracy for classification).
4. ``train(cfg, sinks) -> dict``: the loop. It refuses to overwrite an earlier run's results, resumes
   from the latest good checkpoint with ``train.resume``, evaluates every ``train.eval_every`` steps and
   at the end, checkpoints every ``train.checkpoint_every`` steps and at the end, sends one event per
   step to every sink (``events.jsonl``, the console, extra sinks), and leaves ``adapter/``,
   ``tokenizer/``, ``run_config.json`` and ``summary.json`` in ``cfg.output_dir``.

The benchmark mode reuses 1-3 directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from peftlab import distributed
from peftlab.atomic import write_json_atomic
from peftlab.builder import ADAPTER_DIR, build_for_run, build_tokenizer
from peftlab.checkpoint import (
    CHECKPOINTS_DIR,
    Progress,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from peftlab.data import (
    Batch,
    BatchLoader,
    collate,
    collate_packed,
    count_tokens,
    load_data,
    model_inputs,
    pack,
)
from peftlab.logging import (
    EVENTS_FILE,
    ConsoleSink,
    EventSink,
    JsonlSink,
    is_finite_number,
    read_events,
    rewind_events,
)
from peftlab.methods import PeftLabModel
from peftlab.metrics import LossTerms, causal_lm_terms, classification_terms, count_targets
from peftlab.optimizer import build_optimizer
from peftlab.run_checks import check_run_settings
from peftlab.run_config import RunConfig, resolve_path, save_resolved_config
from peftlab.run_dir import claim_run_dir
from peftlab.scoring import multiple_choice_accuracy

SUMMARY_FILE = "summary.json"
TASK_LABELS_FILE = "labels.json"  # beside a peftlab.sources export: the class names of a task
# What marks a folder as holding an earlier run's results (Hydra's own files do not count).
RESULT_NAMES = (EVENTS_FILE, SUMMARY_FILE, ADAPTER_DIR, CHECKPOINTS_DIR)
CLASSIFICATION_TASK = "sequence_classification"
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class RunFolderError(ValueError):
    """``output_dir`` already holds an earlier run's results and ``train.resume`` is not set."""


@dataclass
class RunParts:
    """Everything a training loop needs, built from one ``RunConfig`` by ``prepare_run``."""

    cfg: RunConfig
    model: PeftLabModel
    tokenizer: PreTrainedTokenizerBase
    train_loader: BatchLoader
    valid_loader: BatchLoader | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32
    scaler: torch.amp.GradScaler | None  # fp16 only
    steps_per_epoch: int
    total_steps: int
    context: distributed.DistributedContext = distributed.SINGLE_PROCESS  # this rank among the launch's
    engine: torch.nn.Module | None = None  # what the step forwards through (a DDP wrapper); None: ``model``

    @property
    def is_classification(self) -> bool:
        """True for sequence-classification models (accuracy instead of token accuracy)."""
        return self.cfg.model.task == CLASSIFICATION_TASK


@dataclass
class StepStats:
    """What one optimiser step did."""

    loss: float  # mean over the step's target tokens (sequences for classification)
    accuracy: float  # mean token accuracy (accuracy for classification)
    num_tokens: int  # real input tokens (no padding)
    num_targets: int  # tokens (or sequences) the loss averaged over
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used
    seconds: float
    skipped: bool = False  # True when a non-finite loss made the step a no-op (train.skip_nonfinite)


# --- 1. setup --------------------------------------------------------------------------------------


def prepare_run(cfg: RunConfig, run_dir: str | Path | None = None) -> RunParts:
    """Build model, tokenizer, loaders, optimiser and scheduler for ``cfg``.

    With ``run_dir`` the tokenizer and (for presets) the base weights are saved there, and a resumed
    run reloads the base weights it saved. Without it nothing is written (benchmarks).
    """
    check_run_settings(cfg)
    device = resolve_device(cfg.train.device)
    context = distributed.init_distributed(cfg.train.strategy, device)
    device = context.device(device)
    autocast_dtype = resolve_precision(cfg.train.precision, device)
    seed_everything(cfg.seed)
    tokenizer = build_tokenizer(cfg.model)
    # the data first: a bad file fails in seconds, before a large model loads
    data = load_data(cfg.data, tokenizer, cfg.model.task, cfg.model.num_labels)
    writes = run_dir is not None and context.is_main  # rank 0 saves the tokenizer and base weights
    model, _ = build_for_run(cfg, Path(run_dir) if writes else None, tokenizer)
    if cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    train_loader = make_loader(data.train.examples, cfg, tokenizer, shuffle=True, context=context)
    valid_loader = make_loader(data.valid.examples, cfg, tokenizer, False, context) if data.valid else None
    model.to(device)
    model.train()
    engine = distributed.wrap_model(model, context, device)  # before the optimiser: FSDP swaps in shards
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.loraplus_lr_ratio)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * steps_per_epoch
    schedule = lr_multiplier(cfg.train.schedule, cfg.train.warmup_steps, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    return RunParts(
        cfg,
        model,
        tokenizer,
        train_loader,
        valid_loader,
        optimizer,
        scheduler,
        device,
        autocast_dtype,
        scaler,
        steps_per_epoch,
        total_steps,
        context,
        engine,
    )


def make_loader(
    examples: Sequence[Any],
    cfg: RunConfig,
    tokenizer: PreTrainedTokenizerBase,
    shuffle: bool,
    context: distributed.DistributedContext = distributed.SINGLE_PROCESS,
) -> BatchLoader:
    """Batches of padded examples, or of packed rows when ``data.packing`` is on.

    Under several ranks each batch is a global one (``batch_size × world_size`` examples, in the
    single-process order) of which this rank collates its own share.
    """
    pad_id = int(tokenizer.pad_token_id)
    batch_size = cfg.train.batch_size * context.world_size
    if cfg.data.packing:
        if cfg.method.name in ("prompt_tuning", "prefix_tuning"):
            raise ValueError(
                "data.packing works with method lora or full (virtual tokens would cross examples)"
            )
        rows = pack(examples, cfg.data.max_length)
        collate_rows = distributed.rank_collate(lambda items: collate_packed(items, pad_id), context)
        return BatchLoader(rows, batch_size, collate_rows, shuffle, cfg.seed)
    collate_examples = distributed.rank_collate(lambda items: collate(items, pad_id), context)
    return BatchLoader(examples, batch_size, collate_examples, shuffle, cfg.seed)


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor at step ``s`` (0-based): ``(s+1)/warmup`` in warm-up, then cosine, linear or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule is {schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return multiplier


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device is {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no CUDA GPU is available; use train.device=auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` -> bf16 on a CUDA GPU that supports it, fp32 (None) otherwise."""
    if name not in PRECISIONS:
        raise ValueError(f"train.precision is {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def enable_activation_checkpointing(model: PeftLabModel) -> None:
    """Recompute each layer's activations in the backward (non-reentrant, so frozen inputs need no grad)."""
    base = model.base_model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    torch.manual_seed(seed)


# --- 2. one step -----------------------------------------------------------------------------------


def train_step(parts: RunParts, batch: Batch | Sequence[Batch]) -> StepStats:
    """One optimiser step over ``batch`` (or a list of micro-batches, accumulated) and one scheduler step."""
    micro_batches = [batch] if isinstance(batch, dict) else list(batch)
    started = time.perf_counter()
    parts.model.train()
    # the loss is the mean over the targets of every rank's micro-batches; DDP/FSDP average the
    # gradients over the ranks, so each rank scales its summed loss by world_size / global targets
    (targets,) = distributed.all_reduce_sum([sum(count_targets(b["labels"]) for b in micro_batches)])
    targets = int(targets)
    scale = distributed.loss_scale(parts.context)
    loss_sum, correct, tokens = 0.0, 0, 0
    for index, micro in enumerate(micro_batches):
        with distributed.gradient_sync(parts.engine, index == len(micro_batches) - 1):
            terms = _forward(parts, micro)
            scaled = terms.loss_sum * scale / max(targets, 1)
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        loss_sum += float(terms.loss_sum.detach())
        correct += terms.correct
        tokens += count_tokens(micro)
    loss_sum, correct, tokens = distributed.all_reduce_sum([loss_sum, correct, tokens])
    correct, tokens = int(correct), int(tokens)
    loss = loss_sum / max(targets, 1)
    lr = parts.optimizer.param_groups[0]["lr"]
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    grad_norm = _clip_gradients(parts)
    finite = math.isfinite(loss) and (parts.scaler is not None or math.isfinite(grad_norm))
    if finite:
        if parts.scaler is not None:
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            parts.optimizer.step()
    elif not parts.cfg.train.skip_nonfinite:
        parts.optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(
            f"step {parts.scheduler.last_epoch + 1}: training loss {loss}, gradient norm {grad_norm}; "
            "lower train.lr, use train.precision=fp32, or set train.skip_nonfinite=true to skip such steps"
        )
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return StepStats(
        loss, correct / max(targets, 1), tokens, targets, grad_norm, lr, seconds, skipped=not finite
    )


def _forward(parts: RunParts, batch: Batch) -> LossTerms:
    """Forward one batch (under autocast when set) and return its summed loss terms."""
    inputs = {
        name: value.to(parts.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for name, value in model_inputs(batch).items()
    }
    if not parts.is_classification:
        inputs["use_cache"] = False  # no KV cache in training (and packed batches need it off)
    module = parts.engine if parts.engine is not None else parts.model
    with _autocast(parts):
        logits = module(**inputs).logits
    if parts.is_classification:
        return classification_terms(logits, batch["labels"])
    return causal_lm_terms(logits, batch["labels"])


def _autocast(parts: RunParts) -> contextlib.AbstractContextManager[Any]:
    if parts.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=parts.device.type, dtype=parts.autocast_dtype)


def _clip_gradients(parts: RunParts) -> float:
    """Clip to ``train.max_grad_norm`` (when > 0) and return the norm before clipping."""
    parameters = [p for p in parts.model.trainable_parameters() if p.grad is not None]
    max_norm = parts.cfg.train.max_grad_norm if parts.cfg.train.max_grad_norm > 0 else math.inf
    if not parameters:
        return 0.0
    return distributed.clip_grad_norm(parameters, max_norm)  # over all shards under FSDP


# --- 3. evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(parts: RunParts, loader: BatchLoader | None = None) -> dict[str, float]:
    """Validation loss and mean token accuracy (``valid_accuracy`` for classification); {} without data."""
    loader = loader if loader is not None else parts.valid_loader
    if loader is None:
        return {}
    parts.model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        terms = _forward(parts, batch)
        loss_sum += float(terms.loss_sum)
        correct += terms.correct
        count += terms.count
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum, correct, count])
    parts.model.train()
    accuracy_key = "valid_accuracy" if parts.is_classification else "valid_mean_token_accuracy"
    return {"valid_loss": loss_sum / max(count, 1), accuracy_key: correct / max(count, 1)}


# --- 4. the loop -----------------------------------------------------------------------------------


def train(cfg: RunConfig, sinks: Sequence[EventSink] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says and return the result summary (also written to ``summary.json``).

    ``sinks`` get every event too; they stay open (the caller closes them, e.g. after logging the
    summary). The run holds ``output_dir``'s lock throughout (``peftlab.run_dir``).

    Summary keys: ``final_train_loss``, ``final_valid_loss``, ``valid_mean_token_accuracy`` (or
    ``valid_accuracy``), ``first_train_loss``, ``steps``, ``epochs``, ``tokens``, ``wall_time_s``,
    ``trainable_params``, ``total_params``, ``trainable_pct``, ``skipped_nonfinite_steps``,
    ``method``, ``output_dir`` (and ``token_accuracy`` / ``task_accuracy``, the sweep report's names).
    """
    started = time.perf_counter()
    context = distributed.init_distributed(cfg.train.strategy, resolve_device(cfg.train.device))
    # ranks launched through Hydra may each have named their own timestamped folder: all use rank 0's
    run_dir = Path(distributed.broadcast_object(str(Path(cfg.output_dir).resolve())))
    cfg = replace(cfg, output_dir=str(run_dir))
    # rank 0 alone holds the folder's lock and writes events, results and W&B (the `sinks`)
    with claim_run_dir(run_dir) if context.is_main else contextlib.nullcontext(run_dir):
        check_run_folder(run_dir, cfg.train.resume)
        distributed.barrier()  # every rank has looked at the folder before rank 0 writes into it
        cfg = with_resolved_paths(cfg)
        parts = prepare_run(cfg, run_dir=run_dir)
        progress = _resume(parts, run_dir) if cfg.train.resume else Progress()
        if context.is_main:
            rewind_events(run_dir / EVENTS_FILE, progress.step)
            save_resolved_config(cfg, run_dir)
        distributed.barrier()
        history = read_events(run_dir / EVENTS_FILE) if progress.step else []
        own_sinks: list[EventSink] = [JsonlSink(run_dir / EVENTS_FILE)] if context.is_main else []
        if cfg.logger.console and context.is_main:
            own_sinks.append(ConsoleSink(parts.total_steps, progress.step))
        sinks = sinks if context.is_main else []
        save = distributed.save_sharded_checkpoint if context.is_distributed else save_checkpoint
        try:
            for micro_batches, next_epoch, next_batch in step_batches(parts, progress):
                stats = train_step(parts, micro_batches)
                tokens = progress.tokens_seen + stats.num_tokens
                progress = Progress(progress.step + 1, next_epoch, next_batch, tokens)
                event = step_event(parts, stats, progress)
                if _due(progress.step, cfg.train.eval_every, parts.total_steps):
                    event.update(evaluate(parts))
                history.append(event)
                for sink in [*own_sinks, *(sinks or [])]:
                    sink.log(event)
                # after the event is written: a checkpoint never exists without its step's event
                if _due(progress.step, cfg.train.checkpoint_every, parts.total_steps):
                    keep = cfg.train.keep_checkpoints
                    save(run_dir, parts.model, parts.optimizer, parts.scheduler, progress, parts.scaler, keep)
        finally:
            for sink in own_sinks:
                sink.close()
        # FSDP: every rank gathers the shards, then rank 0 writes the same file one process would
        with distributed.full_trainable_parameters(parts.model):
            distributed.run_on_main(lambda: parts.model.save_adapter(run_dir / ADAPTER_DIR))
        summary = summarize(parts, progress, history, time.perf_counter() - started)
        distributed.run_on_main(lambda: write_json_atomic(run_dir / SUMMARY_FILE, summary))
        return summary


def step_batches(parts: RunParts, start: Progress) -> Iterator[tuple[list[Batch], int, int]]:
    """``(micro_batches, next_epoch, next_batch)`` for each remaining optimiser step, from ``start`` on.

    A step takes ``train.grad_accum`` batches, fewer at the end of an epoch (steps never span epochs).
    """
    loader, accumulate = parts.train_loader, parts.cfg.train.grad_accum
    step, epoch, first = start.step, start.epoch, start.batch_in_epoch
    while step < parts.total_steps:
        group: list[Batch] = []
        for index, batch in enumerate(loader.batches(epoch, first), start=first):
            group.append(batch)
            if len(group) == accumulate or index == len(loader) - 1:
                at_end = index == len(loader) - 1
                yield group, (epoch + 1 if at_end else epoch), (0 if at_end else index + 1)
                group = []
                step += 1
                if step >= parts.total_steps:
                    return
        epoch, first = epoch + 1, 0


def step_event(parts: RunParts, stats: StepStats, progress: Progress) -> dict[str, Any]:
    """The event of one step (see ``peftlab.logging`` for the fields)."""
    accuracy_key = "train_accuracy" if parts.is_classification else "train_mean_token_accuracy"
    event: dict[str, Any] = {
        "step": progress.step,
        "epoch": progress.epoch + progress.batch_in_epoch / len(parts.train_loader),
        "train_loss": stats.loss,
        accuracy_key: stats.accuracy,
        "lr": stats.lr,
        "tokens_per_s": stats.num_tokens / stats.seconds if stats.seconds > 0 else None,
        "grad_norm": stats.grad_norm,
        "tokens": progress.tokens_seen,
    }
    if stats.skipped:
        event["skipped_nonfinite"] = True
    return event


def summarize(
    parts: RunParts, progress: Progress, history: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """The result summary of a run from its events (``history``) and a final evaluation when needed."""
    train_losses = [e["train_loss"] for e in history if is_finite_number(e.get("train_loss"))]
    final_valid = next((e for e in reversed(history) if "valid_loss" in e), None)
    if final_valid is None or final_valid.get("step") != progress.step:
        final_valid = evaluate(parts)
    trainable = parts.model.num_trainable_parameters()
    total = parts.model.num_parameters()
    accuracy_key = "valid_accuracy" if parts.is_classification else "valid_mean_token_accuracy"
    accuracy = final_valid.get(accuracy_key)
    summary = {
        "method": parts.cfg.method.name,
        "output_dir": str(parts.cfg.output_dir),
        "steps": progress.step,
        "epochs": progress.step / parts.steps_per_epoch,
        "tokens": progress.tokens_seen,
        "wall_time_s": seconds,
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_valid_loss": final_valid.get("valid_loss"),
        accuracy_key: accuracy,
        # the names the sweep report reads
        "token_accuracy": None if parts.is_classification else accuracy,
        "task_accuracy": accuracy if parts.is_classification else decoder_task_accuracy(parts),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
        "skipped_nonfinite_steps": sum(1 for e in history if e.get("skipped_nonfinite")),
        "world_size": parts.context.world_size,
    }
    return summary


def decoder_task_accuracy(parts: RunParts) -> float | None:
    """Multiple-choice log-likelihood accuracy of a causal LM on ``data.valid_file``: every class name is
    scored as the completion of each prompt (kept to ``data.max_length`` tokens) and the most likely one
    is the prediction.

    Applies when the file is a completion export of ``peftlab.sources`` (a ``labels.json`` beside it lists
    the classes); None otherwise, and in multi-process runs.
    """
    valid_file = parts.cfg.data.valid_file
    if parts.is_classification or not valid_file or parts.context.world_size != 1:
        return None
    questions = multiple_choice_questions(Path(valid_file))
    if questions is None:
        return None
    contexts, choices, labels = questions
    result = multiple_choice_accuracy(
        parts.model,
        parts.tokenizer,
        contexts,
        choices,
        labels,
        batch_size=parts.cfg.train.batch_size,
        max_length=parts.cfg.data.max_length,  # the contexts training saw: cut from the left, as it cuts them
    )
    return result.accuracy


def multiple_choice_questions(path: Path) -> tuple[list[str], list[list[str]], list[int]] | None:
    """``(prompts, choices, labels)`` of a completion JSONL file whose ``labels.json`` names the classes
    (each choice is a class name with the completions' leading whitespace); None without a class list."""
    labels_file = path.parent / TASK_LABELS_FILE
    if not labels_file.is_file():
        return None
    label_names = json.loads(labels_file.read_text(encoding="utf-8")).get("label_names") or []
    contexts, choices, labels = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line) if line.strip() else {}
        if not label_names or "prompt" not in record:
            continue
        completion = str(record.get("completion", ""))
        if completion.strip() not in label_names:
            raise ValueError(
                f"{path}, line {number}: completion {completion!r} is none of the classes "
                f"{label_names} that {labels_file} lists"
            )
        separator = completion[: len(completion) - len(completion.lstrip())]
        contexts.append(record["prompt"])
        choices.append([separator + name for name in label_names])
        labels.append(label_names.index(completion.strip()))
    return (contexts, choices, labels) if contexts else None


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run in a folder that holds an earlier run's results (unless resuming)."""
    found = [name for name in RESULT_NAMES if (run_dir / name).exists()]
    if found and not resume:
        raise RunFolderError(
            f"{run_dir} already holds the results of an earlier run ({', '.join(found)}); "
            "choose another output_dir, move that folder away, or set train.resume=true to continue it"
        )


def with_resolved_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with data files, init_from and output_dir made absolute (what ``run_config.json`` records)."""
    data = replace(
        cfg.data,
        train_file=str(resolve_path(cfg.data.train_file)) if cfg.data.train_file else None,
        valid_file=str(resolve_path(cfg.data.valid_file)) if cfg.data.valid_file else None,
    )
    training = replace(
        cfg.train, init_from=str(resolve_path(cfg.train.init_from)) if cfg.train.init_from else None
    )
    model = cfg.model
    if model.name_or_path and Path(model.name_or_path).exists():
        model = replace(model, name_or_path=str(Path(model.name_or_path).resolve()))
    return replace(
        cfg, data=data, train=training, model=model, output_dir=str(Path(cfg.output_dir).resolve())
    )


def _resume(parts: RunParts, run_dir: Path) -> Progress:
    """Restore the latest good checkpoint (warning about newer damaged ones); none: start fresh."""
    checkpoint, skipped = latest_checkpoint(run_dir)
    for message in skipped:
        warnings.warn(message, stacklevel=2)
    if checkpoint is None:
        if list_checkpoints(run_dir):
            raise ValueError(f"{run_dir}: no usable checkpoint to resume from:\n" + "\n".join(skipped))
        return Progress()
    return load_checkpoint(checkpoint, parts.model, parts.optimizer, parts.scheduler, parts.scaler)


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


__all__ = [
    "RunFolderError",
    "RunParts",
    "StepStats",
    "evaluate",
    "prepare_run",
    "train",
    "train_step",
]
