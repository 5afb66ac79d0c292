"""``model.pooling=mean``: a BERT-style classifier reads the masked mean of its last hidden states."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.builder import load_run
from peftlab.export import export_merged
from peftlab.methods.lora import LoRAConfig
from peftlab.methods.prefix_tuning import PrefixTuningConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig
from peftlab.models import build_model
from peftlab.pooling import MaskedMeanPooler, apply_pooling, check_pooling
from peftlab.run_checks import check_run_settings
from peftlab.run_config import RunConfig
from peftlab.train import train

METHODS = {
    "lora": lambda: LoRAConfig(r=4, alpha=8.0, task_type="SEQ_CLS"),
    "prefix_tuning": lambda: PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"),
    "prompt_tuning": lambda: PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"),
}


def random_batch(seed: int, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 500, (3, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length - 4 :] = 0
    attention_mask[2, 2:] = 0
    return input_ids, attention_mask


def mean_pooled_classifier(seed: int = 0) -> torch.nn.Module:
    return apply_pooling(build_model("tiny-bert", task="sequence_classification", seed=seed), "mean").eval()


def test_pooler_gives_the_float64_masked_mean_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 7, 5, generator=generator, requires_grad=True)
    mask = (torch.rand(4, 7, generator=generator) > 0.4).long()
    mask[:, 0] = 1
    pooler = MaskedMeanPooler()
    pooler.attention_mask = mask
    pooled = pooler(hidden)
    weight = torch.randn(pooled.shape, generator=generator)
    (pooled * weight).sum().backward()

    h64, m64 = hidden.detach().double(), mask.double()
    expected = torch.stack([h64[row][m64[row] == 1].mean(dim=0) for row in range(4)])
    torch.testing.assert_close(pooled.double(), expected, rtol=1e-6, atol=1e-6)
    expected_grad = weight.double()[:, None, :] * (m64 / m64.sum(dim=1, keepdim=True))[:, :, None]
    torch.testing.assert_close(hidden.grad.double(), expected_grad, rtol=1e-6, atol=1e-6)


def test_classifier_reads_the_mean_of_the_attended_tokens() -> None:
    model = mean_pooled_classifier()
    input_ids, attention_mask = random_batch(2)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        states = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.double()
    weights = attention_mask.double()[:, :, None]
    mean = (states * weights).sum(dim=1) / weights.sum(dim=1)
    head = model.classifier
    expected = mean @ head.weight.double().T + head.bias.double()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
    assert model.bert.pooler.attention_mask is None, "the mask of a call must not outlive it"


def test_padding_does_not_change_the_prediction_and_the_mask_may_be_positional() -> None:
    model = mean_pooled_classifier()
    input_ids, attention_mask = random_batch(3, length=6)
    padded_ids = torch.cat([input_ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model(input_ids=input_ids, attention_mask=attention_mask).logits
        long = model(padded_ids, padded_mask).logits
        unmasked = model(input_ids=padded_ids).logits
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, short, atol=1e-4), "padding read as tokens must change the mean"


def test_cls_pooling_leaves_the_model_as_built() -> None:
    model = build_model("tiny-bert", task="sequence_classification", seed=0)
    pooler = model.bert.pooler
    assert apply_pooling(model, "cls").bert.pooler is pooler


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_through_the_mean_and_ignores_padding(method: str) -> None:
    torch.manual_seed(0)
    model = peftlab.apply(mean_pooled_classifier(), METHODS[method]())
    input_ids, attention_mask = random_batch(4, length=6)
    padded_ids = torch.cat([input_ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model(input_ids=input_ids, attention_mask=attention_mask).logits
        long = model(input_ids=padded_ids, attention_mask=padded_mask).logits
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-5)
    labels = torch.tensor([0, 1, 1])
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    reached = {name for name, grad in grads.items() if grad is not None and grad.abs().sum() > 0}
    assert any("classifier" in name for name in reached), "the head must learn from the mean"
    # LoRA's A has no gradient while B is still zero; its B, the prefix and the prompt do
    assert any("classifier" not in name for name in reached), f"no method parameter learns: {sorted(grads)}"


def test_bad_pooling_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"model\.pooling is 'max'; choose one of cls, mean"):
        check_pooling("max", "sequence_classification")
    with pytest.raises(ValueError, match=r"model\.pooling=mean applies to model\.task=sequence_classification"):
        check_pooling("mean", "causal_lm")
    cfg = RunConfig()
    cfg.model.pooling = "first"
    with pytest.raises(ValueError, match=r"model\.pooling is 'first'"):
        check_run_settings(cfg)
    llama = build_model("tiny-llama", task="sequence_classification", seed=0)
    with pytest.raises(ValueError, match=r"LlamaForSequenceClassification has none"):
        apply_pooling(llama, "mean")


def mean_pooled_run(tmp_path: Path, method: str) -> Path:
    rows = [
        {"text": text, "label": label}
        for text, label in [("good fun", 1), ("bad dull", 0), ("great joy", 1), ("awful mess", 0)]
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = RunConfig()
    cfg.model.preset = "tiny-bert"
    cfg.model.task = "sequence_classification"
    cfg.model.pooling = "mean"
    cfg.method.name = method
    cfg.method.kernel = "torch"
    cfg.data.train_file = cfg.data.valid_file = str(path)
    cfg.train.max_steps = 20
    cfg.train.lr = 3e-2 if method == "lora" else 3e-3
    cfg.logger.console = False
    cfg.output_dir = str(tmp_path / method)
    summary = train(cfg)
    assert summary["valid_accuracy"] == 1.0
    return Path(cfg.output_dir)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_mean_pooled_run_reloads_with_its_pooling_and_refuses_a_plain_export(
    tmp_path: Path, method: str
) -> None:
    run_dir = mean_pooled_run(tmp_path, method)
    reloaded = load_run(run_dir).model
    assert isinstance(reloaded.base_model.bert.pooler, MaskedMeanPooler)
    input_ids, attention_mask = random_batch(5)
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids, attention_mask=attention_mask).logits
        states = reloaded.base_model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    weights = attention_mask[:, :, None].float()
    head = reloaded.base_model.classifier
    expected = head((states * weights).sum(dim=1) / weights.sum(dim=1))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"model\.pooling=mean"):
        export_merged(run_dir, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_continuing_a_mean_pooled_run_keeps_its_pooling(tmp_path: Path) -> None:
    run_dir = mean_pooled_run(tmp_path, "lora")
    for init_head in ("keep", "new"):
        cfg = RunConfig()
        cfg.model.preset = "tiny-bert"
        cfg.model.task = "sequence_classification"
        cfg.method.name = "lora"
        cfg.data.train_file = cfg.data.valid_file = str(tmp_path / "labels.jsonl")
        cfg.train.init_from = str(run_dir)
        cfg.train.init_head = init_head
        cfg.train.max_steps = 1
        cfg.logger.console = False
        cfg.output_dir = str(tmp_path / f"continued_{init_head}")
        with pytest.raises(ValueError, match=r"that run pools with model\.pooling=mean .* set model\.pooling=mean"):
            train(cfg)
    cfg.model.pooling = "mean"
    cfg.train.init_head = "keep"
    cfg.output_dir = str(tmp_path / "continued")
    train(cfg)
    assert isinstance(load_run(cfg.output_dir).model.base_model.bert.pooler, MaskedMeanPooler)


def test_a_deep_copy_pools_with_its_own_mask() -> None:
    model = mean_pooled_classifier()
    twin = copy.deepcopy(model)
    assert twin.bert.pooler is not model.bert.pooler
    input_ids, attention_mask = random_batch(6)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        # the copy's hooks must hand the mask to the copy's pooler: were it handed to the original's,
        # the copy would pool over the padding too
        got = twin(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert twin.bert.pooler.attention_mask is None and model.bert.pooler.attention_mask is None
