"""Benchmark measurements (``peftlab.bench``) against independent references, and short benchmark runs."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import peftlab
from peftlab import FullFinetuneConfig
from peftlab.bench import (
    BYTES_PER_GIB,
    BenchSettings,
    PeakMemory,
    TokenCount,
    check_bench_settings,
    count_tokens,
    gpu_peak_tflops,
    import_peft,
    mfu,
    model_flops_per_token,
    optimizer_state_bytes,
    parameter_counts,
    quantile,
    run_benchmark,
    synthetic_batches,
    throughput_figures,
)
from peftlab.models import build_model, preset_config
from peftlab.run_config import MethodSettings, RunConfig, TrainConfig


def _bench_config(tmp_path: Path, method: str, **bench: object) -> RunConfig:
    settings = BenchSettings(**{"warmup_steps": 1, "steps": 2, **bench})
    cfg = RunConfig(
        method=MethodSettings(name=method),
        train=TrainConfig(batch_size=4, lr=1e-3),
        output_dir=str(tmp_path / method),
    )
    return replace(cfg, bench=settings)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_quantiles_and_throughput_match_numpy() -> None:
    rng = np.random.default_rng()
    seconds = list(rng.uniform(0.01, 0.5, size=int(rng.integers(3, 12))))
    for fraction in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert quantile(seconds, fraction) == pytest.approx(np.quantile(seconds, fraction, method="linear"))
    tokens = TokenCount(total=int(rng.integers(1000, 5000)), nonpad=900, trained=400)
    figures = throughput_figures(seconds, tokens)
    assert figures["step_time_ms_p50"] == pytest.approx(np.median(seconds) * 1e3)
    assert figures["step_time_ms_p80"] == pytest.approx(np.quantile(seconds, 0.8) * 1e3)
    assert figures["tokens_per_s"] == pytest.approx(900 / np.sum(seconds))
    assert figures["tokens_per_s_total"] == pytest.approx(tokens.total / np.sum(seconds))
    assert figures["tokens_per_s_trained"] == pytest.approx(400 / np.sum(seconds))
    with pytest.raises(ValueError, match=r"bench\.steps >= 1"):
        throughput_figures([], tokens)


def test_count_tokens_separates_padding_and_masked_labels() -> None:
    rng = np.random.default_rng()
    lengths = rng.integers(1, 16, size=5)
    width = int(lengths.max())
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = torch.randint(0, 50, (5, width))
    labels[mask == 0] = -100
    labels[:, 0] = -100  # a prompt position that is not trained
    batch = {"input_ids": torch.randint(0, 50, (5, width)), "attention_mask": mask, "labels": labels}
    counted = count_tokens(batch)
    assert counted.total == 5 * width
    assert counted.nonpad == int(lengths.sum())
    assert counted.trained == int(sum(n - 1 for n in lengths))
    assert (
        count_tokens({**batch, "num_tokens": torch.tensor(7)}).nonpad == 7
    )  # packed rows: the collator's count
    classification = count_tokens(
        {"input_ids": batch["input_ids"], "attention_mask": mask, "labels": labels[:, 0]}
    )
    assert classification.trained == classification.nonpad
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        count_tokens({"labels": labels})


def test_optimizer_state_bytes_counts_adamw_moments() -> None:
    shapes = [(7, 5), (3,), (4, 4)]
    parameters = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    assert optimizer_state_bytes(optimizer) == 0  # state is created by the first step
    sum(p.sum() for p in parameters).backward()
    optimizer.step()
    numel = sum(int(np.prod(shape)) for shape in shapes)
    # exp_avg and exp_avg_sq in fp32 per element, plus one fp32 `step` scalar per parameter tensor
    assert optimizer_state_bytes(optimizer) == 2 * 4 * numel + 4 * len(shapes)


def test_parameter_counts_count_tied_weights_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied
    model[0].weight.requires_grad_(False)
    extra = nn.Linear(4, 4)
    model.append(extra)
    counts = parameter_counts(model)
    assert counts["total_params"] == 40 + 20
    assert counts["trainable_params"] == 20
    assert counts["trainable_pct"] == pytest.approx(100 * 20 / 60)


def test_model_flops_per_token_is_palm_for_full_and_4n_for_frozen_base() -> None:
    config = preset_config("tiny-llama")
    model = build_model(config)
    d, f, layers, vocab = (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.vocab_size,
    )
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    # matrix weights by hand: q, o (d x d), k, v (kv x d), gate/up/down (d x f), and the untied lm_head
    n_matmul = layers * (2 * d * d + 2 * kv * d + 3 * d * f) + vocab * d
    seq_len = 32
    attention = 12 * layers * seq_len * d
    assert model_flops_per_token(model, seq_len, layers, d) == 6 * n_matmul + attention
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    assert model_flops_per_token(model, seq_len, layers, d) == 4 * n_matmul + attention


def test_model_flops_per_token_counts_a_tied_head_inside_the_wrapper() -> None:
    config = preset_config("tiny-gpt2")
    model = peftlab.apply(build_model(config), FullFinetuneConfig())
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    # Conv1D weights: c_attn (d x 3d), attn c_proj (d x d), c_fc (d x 4d), mlp c_proj (4d x d); head tied to wte
    n_matmul = layers * (3 * d * d + d * d + 4 * d * d + 4 * d * d) + vocab * d
    assert model_flops_per_token(model, 16, layers, d) == 6 * n_matmul + 12 * layers * 16 * d


def test_gpu_peak_and_mfu() -> None:
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("Some Future Accelerator") is None
    assert mfu(6e9, 10_000.0, 989.4) == pytest.approx(6e9 * 1e4 / 989.4e12)
    assert mfu(6e9, 10_000.0, None) is None


def test_peak_memory_on_cpu_sees_a_large_allocation_and_resets() -> None:
    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    before = meter.read()["peak_mem_gib"]
    size_gib = 0.25
    block = torch.ones(int(size_gib * BYTES_PER_GIB) // 4)  # written, so the pages are resident
    during = meter.read()
    del block
    assert during["memory_kind"] == "cpu_peak_rss" and during["peak_mem_alloc_gib"] is None
    assert during["peak_mem_gib"] - before >= 0.9 * size_gib
    if during["peak_rss_since_reset"]:
        meter.reset()
        assert meter.read()["peak_mem_gib"] < during["peak_mem_gib"] - 0.5 * size_gib


@pytest.mark.cuda
def test_peak_memory_on_cuda_matches_the_allocation() -> None:
    device = torch.device("cuda")
    meter = PeakMemory(device)
    meter.reset()
    base = torch.cuda.memory_allocated(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    figures = meter.read()
    assert figures["peak_mem_alloc_gib"] * BYTES_PER_GIB >= base + block.numel()
    assert figures["peak_mem_reserved_gib"] >= figures["peak_mem_alloc_gib"]


def test_synthetic_batches_have_no_padding_and_follow_the_seed() -> None:
    first = next(synthetic_batches(100, 3, 9, seed=5))
    again = next(synthetic_batches(100, 3, 9, seed=5))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert first["input_ids"].shape == (3, 9) and int(first["attention_mask"].sum()) == 27
    assert torch.equal(first["labels"], first["input_ids"]) and int(first["num_tokens"]) == 27
    classes = next(synthetic_batches(100, 3, 9, seed=5, num_labels=4))["labels"]
    assert classes.shape == (3,) and int(classes.max()) < 4


def test_bench_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"bench\.warmup_steps is -1"):
        check_bench_settings(BenchSettings(warmup_steps=-1))
    with pytest.raises(ValueError, match=r"bench\.data is 'disk'"):
        check_bench_settings(BenchSettings(data="disk"))


def test_missing_peft_gives_an_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        import_peft()


def test_synthetic_benchmark_counts_exact_tokens_and_matches_its_events(tmp_path: Path) -> None:
    cfg = _bench_config(tmp_path, "lora", data="synthetic", batch_size=2, seq_len=24, warmup_steps=1, steps=3)
    figures = run_benchmark(cfg)
    events = _events(tmp_path / "lora")
    timed = [e for e in events if e["phase"] == "timed"]
    assert [e["phase"] for e in events] == ["warmup", "timed", "timed", "timed"]
    assert figures["timed_tokens_total"] == figures["timed_tokens"] == 3 * 2 * 24
    assert figures["timed_tokens_trained"] == 3 * 2 * 24
    assert figures["timed_seconds"] == pytest.approx(sum(e["step_time_s"] for e in timed))
    assert figures["step_time_ms_p50"] == pytest.approx(np.median([e["step_time_s"] for e in timed]) * 1e3)
    assert figures["final_train_loss"] == pytest.approx(timed[-1]["train_loss"])
    assert (
        figures["peak_mem_gib"] >= figures["peak_rss_gib"] * 0.99 and figures["memory_kind"] == "cpu_peak_rss"
    )
    assert figures["final_valid_loss"] > 0 and 0.0 <= figures["token_accuracy"] <= 1.0
    assert (tmp_path / "lora" / "run_config.json").is_file()
    with pytest.raises(ValueError, match="already holds the results of an earlier run"):
        run_benchmark(cfg)  # nothing is overwritten


def test_peft_lora_reference_matches_peftlab_lora_on_the_same_base(tmp_path: Path) -> None:
    figures = {name: run_benchmark(_bench_config(tmp_path, name)) for name in ("lora", "peft_lora")}
    first_losses = {name: _events(tmp_path / name)[0]["train_loss"] for name in figures}
    # B starts at zero in both, so the first step sees the same (seeded) base model on the same batch
    assert first_losses["peft_lora"] == pytest.approx(first_losses["lora"], rel=1e-6)
    assert figures["peft_lora"]["trainable_params"] == figures["lora"]["trainable_params"]
    assert figures["peft_lora"]["total_params"] == figures["lora"]["total_params"]
    assert figures["peft_lora"]["optimizer_state_bytes"] == figures["lora"]["optimizer_state_bytes"]
