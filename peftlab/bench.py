"""Benchmark measurements: peak memory, step time, tokens/s, MFU, parameter and optimizer-state sizes.

Units and definitions, stated once and used by every field name:

- memory: GiB = 2^30 bytes (fields end in ``_gib``) or bytes (``_bytes``). On CUDA the peak is the
  allocator's (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``); on the CPU it is the
  process's peak resident set size (``VmHWM``, reset before the timed steps).
- token: one position of ``input_ids`` in a training batch. ``tokens_per_s`` counts the real (non-padding)
  positions, as the training events do; ``tokens_per_s_total`` counts every position, padding included;
  ``tokens_per_s_trained`` counts positions whose label is not ``-100`` (what the loss is taken over).
  Virtual tokens (prompt / prefix tuning) are never counted.
- step: one optimiser step (forward, backward, update). Warm-up steps run first and are not counted.
- MFU: model FLOPs per second over the GPU's dense peak for the run's dtype (see ``model_flops_per_token``).
- several ranks (``train.strategy`` ddp / fsdp): tokens are counted over all ranks, so ``tokens_per_s`` is
  global (``tokens_per_s_per_rank`` divides it by ``world_size``); memory is per GPU: ``peak_mem_gib`` is
  the largest rank's peak and ``peak_mem_gib_per_rank`` lists every rank's.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.run_config import PEFT_LORA, BenchConfig

BYTES_PER_GIB = 2**30
IGNORE_INDEX = -100
BENCH_DATA_SOURCES = ("train", "synthetic")
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"  # writing 5 to clear_refs resets VmHWM (Linux >= 4.0)

# Dense (no sparsity) tensor-core peaks in TFLOP/s for 16-bit inputs, from the vendors' data sheets.
# Matched by substring of torch.cuda.get_device_name(); more specific names first.
GPU_PEAK_TFLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
)


@dataclass
class BenchSettings(BenchConfig):
    """``BenchConfig`` plus where the timed batches come from and an optional GPU peak for MFU."""

    data: str = "train"  # train: batches from the run's training data | synthetic: random ids, no padding
    peak_tflops: float | None = None  # None: look the GPU up in GPU_PEAK_TFLOPS_16BIT


# --- memory ----------------------------------------------------------------------------------------


def read_rss_gib() -> tuple[float | None, float | None]:
    """``(current, peak)`` resident set size of this process in GiB (peak since the last reset)."""
    if PROC_STATUS.is_file():
        fields = {}
        for line in PROC_STATUS.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024 / BYTES_PER_GIB  # the file gives kB
        return fields.get("VmRSS"), fields.get("VmHWM")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    peak_bytes = peak_kib if sys.platform == "darwin" else peak_kib * 1024
    return None, peak_bytes / BYTES_PER_GIB


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux); False when the OS does not allow it."""
    try:
        PROC_CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory over a region of code, on CUDA (allocator peaks) or the CPU (peak RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_reset = False

    def reset(self) -> None:
        """Start a new region: forget earlier peaks."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_reset = reset_peak_rss()

    def current_gib(self) -> float | None:
        """Memory in use now: allocated CUDA memory, or the RSS on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / BYTES_PER_GIB
        return read_rss_gib()[0]

    def read(self) -> dict[str, Any]:
        """The peaks since ``reset``: ``peak_mem_gib`` is the headline (CUDA allocated, or CPU peak RSS)."""
        _, peak_rss = read_rss_gib()
        figures: dict[str, Any] = {"peak_rss_gib": peak_rss, "peak_rss_since_reset": self.rss_reset}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            allocated = torch.cuda.max_memory_allocated(self.device) / BYTES_PER_GIB
            reserved = torch.cuda.max_memory_reserved(self.device) / BYTES_PER_GIB
            figures.update(
                peak_mem_gib=allocated,
                peak_mem_alloc_gib=allocated,
                peak_mem_reserved_gib=reserved,
                memory_kind="cuda_max_memory_allocated",
            )
        else:
            figures.update(
                peak_mem_gib=peak_rss,
                peak_mem_alloc_gib=None,
                peak_mem_reserved_gib=None,
                memory_kind="cpu_peak_rss",
            )
        return figures


# --- tokens and time -------------------------------------------------------------------------------


@dataclass
class TokenCount:
    """Tokens in one batch, by the three definitions in the module docstring (``nonpad`` is the headline)."""

    total: int
    nonpad: int
    trained: int

    def __add__(self, other: TokenCount) -> TokenCount:
        return TokenCount(self.total + other.total, self.nonpad + other.nonpad, self.trained + other.trained)


def count_tokens(batch: Mapping[str, Any]) -> TokenCount:
    """All, non-padding and trained positions of a batch (``input_ids``, ``attention_mask``, ``labels``)."""
    if "input_ids" not in batch:
        raise ValueError(f"a benchmark batch needs 'input_ids'; this one has {sorted(batch)}")
    input_ids = batch["input_ids"]
    total = int(input_ids.numel())
    mask = batch.get("attention_mask")
    if "num_tokens" in batch:  # the collators count real tokens (packed rows have no attention mask)
        nonpad = int(batch["num_tokens"])
    else:
        nonpad = int(mask.sum()) if mask is not None else total
    labels = batch.get("labels")
    if labels is not None and labels.shape == input_ids.shape:
        trained = int((labels != IGNORE_INDEX).sum())
    else:  # sequence classification: every non-padding position feeds the prediction
        trained = nonpad
    return TokenCount(total, nonpad, trained)


class StepTimer:
    """Wall time of one step; waits for the GPU so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> StepTimer:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start


def quantile(values: list[float], fraction: float) -> float:
    """Linear-interpolated quantile (``fraction`` in [0, 1]) of a non-empty list."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def throughput_figures(step_seconds: list[float], tokens: TokenCount) -> dict[str, float]:
    """Step-time quantiles (ms) and tokens/s over the timed steps."""
    if not step_seconds:
        raise ValueError("no timed steps: set bench.steps >= 1")
    total_seconds = sum(step_seconds)
    return {
        "step_time_ms_p50": statistics.median(step_seconds) * 1e3,
        "step_time_ms_p20": quantile(step_seconds, 0.2) * 1e3,
        "step_time_ms_p80": quantile(step_seconds, 0.8) * 1e3,
        "timed_steps": len(step_seconds),
        "timed_seconds": total_seconds,
        "timed_tokens": tokens.nonpad,
        "timed_tokens_total": tokens.total,
        "timed_tokens_trained": tokens.trained,
        "tokens_per_s": tokens.nonpad / total_seconds,
        "tokens_per_s_total": tokens.total / total_seconds,
        "tokens_per_s_trained": tokens.trained / total_seconds,
    }


# --- parameters, optimizer state, FLOPs ------------------------------------------------------------


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters (shared tensors counted once) and the trainable percentage."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (e.g. AdamW's two moments per trained parameter)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def model_flops_per_token(model: nn.Module, seq_len: int, num_layers: int, attention_width: int) -> float:
    """Training FLOPs per token of a decoder with a frozen or trained base (PaLM appendix B, generalised).

    ``N`` counts the weights used in matrix products (every >= 2-D parameter except input embedding
    lookups; a tied output head counts), ``N_t`` the trainable ones among them. Per token:
    forward ``2N``, backward through the activations ``2N``, weight gradients ``2N_t``, attention
    ``12 · layers · seq_len · width`` (forward and backward, causal masking not discounted).
    Full fine-tuning gives PaLM's ``6N + 12·L·T·d``; LoRA ``4N + 2N_lora + 12·L·T·d``.
    """
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    lookup_ids = {id(m.weight) for m in embeddings}
    matmul, trainable = 0, 0
    for parameter in {id(p): p for p in model.parameters()}.values():
        if parameter.dim() < 2 or id(parameter) in lookup_ids:
            continue
        matmul += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    # the transformers model inside any wrapper (PeftLabModel, peft) knows its output head
    owner = next((m for m in model.modules() if callable(getattr(m, "get_output_embeddings", None))), None)
    output = owner.get_output_embeddings() if owner is not None else None
    if output is not None and id(output.weight) in lookup_ids:  # tied head: a matmul too
        matmul += output.weight.numel()
        trainable += output.weight.numel() if output.weight.requires_grad else 0
    return 4.0 * matmul + 2.0 * trainable + 12.0 * num_layers * seq_len * attention_width


def gpu_peak_tflops(device_name: str) -> float | None:
    """The dense 16-bit peak of a GPU by name, or None when it is not in the table."""
    for fragment, tflops in GPU_PEAK_TFLOPS_16BIT:
        if fragment in device_name:
            return tflops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (``tokens_per_s``: every computed position); None without a peak."""
    if not peak_tflops or peak_tflops <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)


# --- batches ---------------------------------------------------------------------------------------


def synthetic_batches(
    vocab_size: int, batch_size: int, seq_len: int, seed: int, num_labels: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of random token ids, no padding; causal-LM labels are the ids (every position
    trained), or with ``num_labels`` one random class per sequence."""
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"bench.batch_size is {batch_size} and bench.seq_len {seq_len}; need >= 1 and >= 2")
    generator = torch.Generator().manual_seed(seed)
    while True:
        input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
        if num_labels is None:
            labels = input_ids.clone()
        else:
            labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
        yield {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
            "num_tokens": torch.tensor(input_ids.numel()),
        }


def training_batches(loader: Any) -> Iterator[Any]:
    """The run's training batches, epoch after epoch (each epoch in its seeded order)."""
    epoch = 0
    while True:
        produced = False
        for batch in loader.batches(epoch):
            produced = True
            yield batch
        if not produced:
            raise ValueError("the training data produced no batch; check data.train_file and data.max_length")
        epoch += 1


# --- the peft reference (bench only) ---------------------------------------------------------------

PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


class PeftReferenceModel(nn.Module):
    """A ``peft.PeftModel`` behind the surface the training step uses (forward, trainable parameters)."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model

    @property
    def config(self) -> Any:
        """The base model's ``transformers`` config."""
        return self.peft_model.get_base_model().config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through peft's model."""
        return self.peft_model(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that receive gradients."""
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        """How many scalars are trained."""
        return sum(p.numel() for p in self.trainable_parameters())

    def num_parameters(self) -> int:
        """How many scalars the model has in all."""
        return sum(p.numel() for p in self.parameters())


def import_peft() -> Any:
    """The ``peft`` package, or a clear error: it is a dev/bench-only dependency."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            f"method.name={PEFT_LORA} builds LoRA with Hugging Face peft, which is not installed ({error}); "
            'install it with `pip install peft` (or `pip install -e ".[dev]"`)'
        ) from None
    return peft


def peft_lora_config(cfg: Any) -> Any:
    """A ``peft.LoraConfig`` with the same hyperparameters as ``cfg.method``."""
    peft = import_peft()
    method = cfg.method
    target = method.target_modules
    return peft.LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=list(target) if isinstance(target, list | tuple) else target,
        use_rslora=method.use_rslora,
        bias=method.bias,
        modules_to_save=list(method.modules_to_save) if method.modules_to_save else None,
        task_type=PEFT_TASK_TYPES[cfg.model.task],
    )


def peft_optimizer(model: PeftReferenceModel, train: Any) -> torch.optim.Optimizer:
    """AdamW as a ``peft`` user builds it: plain, or ``create_loraplus_optimizer`` with a LoRA+ ratio."""
    if train.loraplus_lr_ratio == 1:
        return torch.optim.AdamW(model.trainable_parameters(), lr=train.lr, weight_decay=train.weight_decay)
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model.peft_model,
        torch.optim.AdamW,
        lr=train.lr,
        loraplus_lr_ratio=train.loraplus_lr_ratio,
        loraplus_weight_decay=train.weight_decay,
    )


def prepare_peft_lora_run(cfg: Any) -> Any:
    """``RunParts`` whose model is LoRA built by ``peft.get_peft_model`` on the same seeded base model."""
    from peftlab.train import lr_multiplier, prepare_run

    lora_config = peft_lora_config(cfg)  # fails before the model is built when peft is missing
    peft = import_peft()
    parts = prepare_run(replace(cfg, method=replace(cfg.method, name="full")))
    model = PeftReferenceModel(peft.get_peft_model(parts.model.base_model, lora_config)).to(parts.device)
    model.train()
    optimizer = peft_optimizer(model, cfg.train)
    schedule = lr_multiplier(cfg.train.schedule, cfg.train.warmup_steps, parts.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return replace(parts, cfg=cfg, model=model, optimizer=optimizer, scheduler=scheduler)


# --- the benchmark ---------------------------------------------------------------------------------


def check_bench_settings(bench: BenchConfig) -> None:
    """Reject step counts and sources the benchmark cannot use."""
    if bench.warmup_steps < 0 or bench.steps < 1:
        raise ValueError(
            f"bench.warmup_steps is {bench.warmup_steps} and bench.steps {bench.steps}; need >= 0 and >= 1"
        )
    source = getattr(bench, "data", "train")
    if source not in BENCH_DATA_SOURCES:
        raise ValueError(f"bench.data is {source!r}; choose one of {', '.join(BENCH_DATA_SOURCES)}")


def run_benchmark(cfg: Any, sinks: list[Any] | None = None) -> dict[str, Any]:
    """Run ``bench.warmup_steps`` uncounted steps then ``bench.steps`` timed ones; return the figures.

    One batch per step (``train.grad_accum`` is not used; ``train.max_steps`` becomes the benchmark's
    step count, so the learning-rate schedule spans it): with ``bench.data=train`` the run's training
    batches (``train.batch_size``), with ``synthetic`` random ids of ``bench.batch_size × bench.seq_len``.
    Writes ``events.jsonl`` and ``run_config.json`` into ``cfg.output_dir``; extra sinks get every event
    and are left open. Peak memory covers the warm-up and timed steps (weights included); the accuracy
    figures come from ``evaluate`` on the validation data after the timed steps.
    """
    from peftlab import distributed
    from peftlab.logging import EVENTS_FILE, ConsoleSink, JsonlSink
    from peftlab.run_config import save_resolved_config
    from peftlab.train import (
        check_run_folder,
        evaluate,
        prepare_run,
        resolve_device,
        train_step,
        with_resolved_paths,
    )

    check_bench_settings(cfg.bench)
    context = distributed.init_distributed(cfg.train.strategy, resolve_device(cfg.train.device))
    if cfg.method.name == PEFT_LORA and context.is_distributed:
        raise ValueError(f"method.name={PEFT_LORA} is a single-process reference; use train.strategy=none")
    # the learning-rate schedule spans exactly the benchmark's steps; every rank writes into rank 0's folder
    steps = cfg.bench.warmup_steps + cfg.bench.steps
    output_dir = distributed.broadcast_object(str(Path(cfg.output_dir).resolve()))
    cfg = with_resolved_paths(replace(cfg, output_dir=output_dir, train=replace(cfg.train, max_steps=steps)))
    run_dir = Path(cfg.output_dir)
    check_run_folder(run_dir, resume=False)
    distributed.barrier()
    parts = prepare_peft_lora_run(cfg) if cfg.method.name == PEFT_LORA else prepare_run(cfg)
    if context.is_main:
        save_resolved_config(cfg, run_dir)
    memory = PeakMemory(parts.device)
    after_setup = memory.current_gib()
    batches = _bench_batches(cfg, parts)
    own_sinks: list[Any] = [JsonlSink(run_dir / EVENTS_FILE)] if context.is_main else []
    if cfg.logger.console and context.is_main:
        own_sinks.append(ConsoleSink(steps))
    sinks = sinks if context.is_main else []
    step_seconds: list[float] = []
    counted, sequences = TokenCount(0, 0, 0), 0
    memory.reset()
    try:
        for index in range(cfg.bench.warmup_steps + cfg.bench.steps):
            batch = next(batches)
            local = count_tokens(batch)
            with StepTimer(parts.device) as timer:
                stats = train_step(parts, batch)
            # every rank's tokens (global tokens/s); the ranks' steps end together at the collectives
            total, nonpad, trained, rows = distributed.all_reduce_sum(
                [local.total, local.nonpad, local.trained, batch["input_ids"].shape[0]]
            )
            tokens = TokenCount(int(total), int(nonpad), int(trained))
            timed = index >= cfg.bench.warmup_steps
            if timed:
                step_seconds.append(timer.seconds)
                counted = counted + tokens
                sequences += int(rows)
            event = {
                "step": index + 1,
                "phase": "timed" if timed else "warmup",
                "train_loss": stats.loss,
                "train_accuracy" if parts.is_classification else "train_mean_token_accuracy": stats.accuracy,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "step_time_s": timer.seconds,
                "tokens_per_s": tokens.nonpad / timer.seconds,
            }
            for sink in [*own_sinks, *(sinks or [])]:
                sink.log(event)
        peak = memory.read()
    finally:
        for sink in own_sinks:
            sink.close()
    figures: dict[str, Any] = {
        "mem_after_setup_gib": after_setup,
        **per_rank_memory(distributed.all_gather_object(peak)),
        **throughput_figures(step_seconds, counted),
        "world_size": context.world_size,
    }
    figures["tokens_per_s_per_rank"] = figures["tokens_per_s"] / context.world_size
    figures.update(parameter_counts(parts.model))
    figures["optimizer_state_bytes"] = optimizer_state_bytes(parts.optimizer)
    mean_seq_len = counted.total / sequences  # positions per sequence, padding included
    per_gpu_rate = figures["tokens_per_s_total"] / context.world_size  # MFU: one GPU's rate over its peak
    figures.update(_mfu_figures(cfg, parts, mean_seq_len, per_gpu_rate))
    figures["final_train_loss"] = stats.loss
    figures.update(_accuracy_figures(evaluate(parts), parts.is_classification))
    figures.update(device=str(parts.device), bench_data=getattr(cfg.bench, "data", "train"))
    return figures


def _bench_batches(cfg: Any, parts: Any) -> Iterator[Any]:
    if getattr(cfg.bench, "data", "train") == "train":
        return training_batches(parts.train_loader)
    config = parts.model.config
    num_labels = cfg.model.num_labels if parts.is_classification else None
    seed = cfg.seed + parts.context.rank  # each rank its own synthetic batches
    return synthetic_batches(config.vocab_size, cfg.bench.batch_size, cfg.bench.seq_len, seed, num_labels)


def per_rank_memory(peaks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's memory figures with the headline ``peak_mem_gib`` the largest over ranks (per GPU, not a
    sum), and every rank's peak in ``peak_mem_gib_per_rank``."""
    figures = dict(peaks[0])
    per_rank = [peak.get("peak_mem_gib") for peak in peaks]
    known = [value for value in per_rank if value is not None]
    figures["peak_mem_gib"] = max(known) if known else None
    figures["peak_mem_gib_per_rank"] = per_rank
    return figures


def _mfu_figures(cfg: Any, parts: Any, seq_len: float, tokens_per_s_total: float) -> dict[str, Any]:
    """MFU on a GPU with 16-bit compute; None elsewhere (with the reason)."""
    config = parts.model.config
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    head_dim = int(getattr(config, "head_dim", 0) or (hidden // heads if heads else 0))
    flops = model_flops_per_token(parts.model, seq_len, layers, heads * head_dim)
    figures: dict[str, Any] = {"flops_per_token": flops, "mfu": None, "peak_tflops": None}
    if parts.device.type != "cuda":
        figures["mfu_note"] = "MFU is reported on CUDA GPUs only"
        return figures
    if parts.autocast_dtype not in (torch.bfloat16, torch.float16) and cfg.model.dtype == "float32":
        figures["mfu_note"] = "MFU needs 16-bit compute (train.precision=bf16 or a bf16 model)"
        return figures
    peak = getattr(cfg.bench, "peak_tflops", None) or gpu_peak_tflops(
        torch.cuda.get_device_name(parts.device)
    )
    figures.update(peak_tflops=peak, mfu=mfu(flops, tokens_per_s_total, peak))
    if peak is None:
        figures["mfu_note"] = "unknown GPU: set bench.peak_tflops to its dense 16-bit peak"
    return figures


def _accuracy_figures(valid: Mapping[str, float], classification: bool) -> dict[str, Any]:
    """The report's names for the validation figures (None without validation data)."""
    accuracy = valid.get("valid_accuracy" if classification else "valid_mean_token_accuracy")
    return {
        "final_valid_loss": valid.get("valid_loss"),
        "token_accuracy": None if classification else accuracy,
        "task_accuracy": accuracy if classification else None,
    }
