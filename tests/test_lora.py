"""LoRA layers and method: numerics against Hugging Face PEFT on identical weights, and against float64 torch.

Every comparison uses fresh random inputs and random (non-zero) adapter weights copied into both models.
"""

from __future__ import annotations

import math
import os

import peftlab.kernels
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftlab
from peftlab import AdapterError, LoRAConfig
from peftlab.builder import METHOD_INIT_SEED_OFFSET, build_base_model, build_for_run
from peftlab.methods.lora import LoRALinear, lora_layers, plan_attach
from peftlab.models import build_model
from peftlab.run_config import RunConfig
from peftlab.train import seed_everything

# PEFT warns that it switches fan_in_fan_out on for GPT-2's Conv1D, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
TASKS = {"tiny-llama": "causal_lm", "tiny-gpt2": "causal_lm", "tiny-bert": "sequence_classification"}
VOCAB = 512
REL_TOL = 1e-5


# --- helpers shared with test_lora_adapters.py -----------------------------------------------------


def twin_models(preset: str, dtype: str = "float32") -> tuple[nn.Module, nn.Module]:
    """The same model built twice from the same seed, in eval mode: one for peftlab, one for PEFT."""
    first = build_model(preset, task=TASKS[preset], seed=0, dtype=dtype).eval()
    second = build_model(preset, task=TASKS[preset], seed=0, dtype=dtype).eval()
    return first, second


def peft_config_like(config: LoRAConfig) -> LoraConfig:
    """The PEFT ``LoraConfig`` that describes the same adapter (no re-init: values get copied in)."""
    return LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        use_rslora=config.use_rslora,
        bias=config.bias,
        modules_to_save=config.modules_to_save,
        task_type=config.task_type,
        init_lora_weights=False,
    )


def randomize_adapter(model: peftlab.PeftLabModel, seed: int) -> None:
    """Give every saved adapter tensor (A, B, heads, trained biases) fresh random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.method._adapter_tensors(model.base_model).values():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.2
                tensor.copy_(noise.to(tensor.dtype))


def copy_adapter_into_peft(model: peftlab.PeftLabModel, peft_model: PeftModel) -> None:
    """Load peftlab's adapter tensors into a PEFT model through PEFT's own loader; every key must land."""
    state = model.method.adapter_state_dict(model.base_model)
    result = set_peft_model_state_dict(peft_model, state)
    assert not result.unexpected_keys, result.unexpected_keys
    missing_adapter_keys = [key for key in result.missing_keys if "lora_" in key or "modules_to_save" in key]
    assert not missing_adapter_keys, missing_adapter_keys


def random_batch(preset: str, seed: int, batch: int = 2, length: int = 9) -> dict[str, torch.Tensor]:
    """Fresh random token ids (and a ragged attention mask for the encoder)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if preset == "tiny-bert":
        mask[0, -3:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def peft_parameter_name(name: str, modules_to_save: list[str]) -> str:
    """The name PEFT gives the parameter peftlab calls ``name`` (inside the base model)."""
    if name.endswith((".lora_A", ".lora_B")):
        return f"base_model.model.{name}.default.weight"
    for module in modules_to_save:
        if name.startswith(module + "."):
            return f"base_model.model.{module}.modules_to_save.default.{name[len(module) + 1 :]}"
    return f"base_model.model.{name}"


# --- parity with PEFT ------------------------------------------------------------------------------

PARITY_CASES = [
    ("tiny-llama", LoRAConfig(r=1, alpha=4.0, target_modules=["q_proj", "v_proj"])),
    ("tiny-llama", LoRAConfig(r=16, alpha=32.0, target_modules="all-linear", use_rslora=True)),
    ("tiny-llama", LoRAConfig(r=4, alpha=8.0, target_modules=r".*\.(k_proj|down_proj)", use_rslora=True)),
    ("tiny-gpt2", LoRAConfig(r=4, alpha=16.0)),
    ("tiny-gpt2", LoRAConfig(r=16, alpha=8.0, target_modules="all-linear", use_rslora=True, bias="lora_only")),
    ("tiny-bert", LoRAConfig(r=4, alpha=8.0, task_type="SEQ_CLS")),
    ("tiny-bert", LoRAConfig(r=1, alpha=2.0, target_modules="all-linear", use_rslora=True, bias="all", task_type="SEQ_CLS")),
]


@pytest.mark.parametrize(("preset", "config"), PARITY_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_logits_and_every_gradient_match_peft(preset: str, config: LoRAConfig) -> None:
    ours_base, theirs_base = twin_models(preset)
    ours = peftlab.apply(ours_base, config)
    theirs = get_peft_model(theirs_base, peft_config_like(config))
    randomize_adapter(ours, seed=11)
    copy_adapter_into_peft(ours, theirs)
    assert any(layer.lora_B.abs().sum() > 0 for layer in lora_layers(ours_base).values())

    saved = config.modules_to_save_entries()
    ours_trainable = dict(ours.base_model.named_parameters())
    ours_trainable = {n: p for n, p in ours_trainable.items() if p.requires_grad}
    theirs_trainable = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert sorted(peft_parameter_name(n, saved) for n in ours_trainable) == sorted(theirs_trainable)

    batch = random_batch(preset, seed=5)
    ours_logits = ours(**batch).logits
    theirs_logits = theirs(**batch).logits
    assert relative_error(ours_logits, theirs_logits) < REL_TOL

    upstream = torch.randn(ours_logits.shape, generator=torch.Generator().manual_seed(6))
    (ours_logits * upstream).sum().backward()
    (theirs_logits * upstream).sum().backward()
    for name, parameter in ours_trainable.items():
        expected = theirs_trainable[peft_parameter_name(name, saved)].grad
        assert parameter.grad is not None and expected is not None, name
        assert relative_error(parameter.grad, expected) < REL_TOL, name


def test_adapter_dropout_matches_peft_in_training_and_is_off_in_eval() -> None:
    config = LoRAConfig(r=4, alpha=8.0, dropout=0.3, target_modules=["q_proj", "v_proj", "down_proj"], kernel="torch")
    ours_base, theirs_base = twin_models("tiny-llama")
    ours = peftlab.apply(ours_base, config)
    theirs = get_peft_model(theirs_base, peft_config_like(config))
    randomize_adapter(ours, seed=2)
    copy_adapter_into_peft(ours, theirs)
    batch = random_batch("tiny-llama", seed=3)

    ours.train()
    theirs.train()
    torch.manual_seed(123)
    ours_logits = ours(**batch).logits
    torch.manual_seed(123)
    theirs_logits = theirs(**batch).logits
    assert relative_error(ours_logits, theirs_logits) < REL_TOL
    torch.manual_seed(124)
    assert relative_error(ours(**batch).logits, ours_logits) > 1e-3  # a new mask changes the output

    ours.eval()
    without_dropout = peftlab.apply(build_model("tiny-llama", seed=0), LoRAConfig(**{**_fields(config), "dropout": 0.0}))
    without_dropout.method.load_adapter_state_dict(
        without_dropout.base_model, ours.method.adapter_state_dict(ours.base_model), "in-memory"
    )
    without_dropout.eval()
    assert torch.equal(ours(**batch).logits, without_dropout(**batch).logits)


def _fields(config: LoRAConfig) -> dict:
    return {name: getattr(config, name) for name in ("r", "alpha", "dropout", "target_modules", "kernel")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_init_matches_peft_bit_for_bit_after_the_same_seed(dtype: str) -> None:
    ours_base, theirs_base = twin_models("tiny-llama", dtype=dtype)
    targets = ["q_proj", "k_proj", "down_proj"]
    torch.manual_seed(7)
    ours = peftlab.apply(ours_base, LoRAConfig(r=4, target_modules=targets))
    torch.manual_seed(7)
    theirs = get_peft_model(theirs_base, LoraConfig(r=4, target_modules=targets))
    theirs_parameters = dict(theirs.named_parameters())
    for name, layer in lora_layers(ours_base).items():
        their_A = theirs_parameters[f"base_model.model.{name}.lora_A.default.weight"]
        assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
        assert torch.equal(layer.lora_A, their_A), name
        assert torch.count_nonzero(layer.lora_B) == 0
        bound = 1 / math.sqrt(layer.lora_A.shape[1])  # kaiming_uniform(a=√5) on fan_in
        assert layer.lora_A.abs().max() <= bound
    assert ours.method.plan.targets == list(lora_layers(ours_base))


def test_a_run_draws_its_lora_init_as_peft_does_after_the_method_seed() -> None:
    """``peft_reference.py --peftlab-draws`` pairs with a run: same ``A``, same random stream after."""
    cfg = RunConfig()
    cfg.seed = 11
    cfg.model.preset = "tiny-bert"
    cfg.model.task = "sequence_classification"
    cfg.method.name = "lora"
    cfg.method.r = 4
    cfg.method.target_modules = ["query", "value"]
    seed_everything(cfg.seed)
    ours, tokenizer = build_for_run(cfg)
    stream_after_ours = torch.rand(8)
    seed_everything(cfg.seed)
    base = build_base_model(cfg.model, tokenizer, cfg.seed)
    torch.manual_seed(cfg.seed + METHOD_INIT_SEED_OFFSET)
    peft_config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=cfg.method.alpha, target_modules=["query", "value"])
    theirs = get_peft_model(base, peft_config)
    assert torch.equal(torch.rand(8), stream_after_ours), "the dropout stream must start in the same state"
    theirs_parameters = dict(theirs.named_parameters())
    layers = lora_layers(ours.base_model)
    assert len(layers) == 2 * ours.base_model.config.num_hidden_layers
    for name, layer in layers.items():
        assert torch.equal(layer.lora_A, theirs_parameters[f"base_model.model.{name}.lora_A.default.weight"]), name
    head = theirs_parameters["base_model.model.classifier.modules_to_save.default.weight"]
    assert torch.equal(ours.base_model.classifier.weight, head)


# --- the layer against float64 torch -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_layer_forward_and_gradients_match_float64_reference(kind: str, rank: int) -> None:
    torch.manual_seed(rank)
    in_features, out_features, scaling = 24, 40, 0.75
    base = nn.Linear(in_features, out_features) if kind == "linear" else Conv1D(out_features, in_features)
    if kind == "conv1d":
        nn.init.normal_(base.weight, std=0.2)
        nn.init.normal_(base.bias, std=0.2)
    layer = LoRALinear(base, r=rank, scaling=scaling, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, in_features, requires_grad=True)
    upstream = torch.randn(3, 5, out_features)
    (layer(x) * upstream).sum().backward()

    weight = base.weight.detach().double()
    weight_out_in = weight if kind == "linear" else weight.t()
    x64 = x.detach().double().requires_grad_(True)
    A64 = layer.lora_A.detach().double().requires_grad_(True)
    B64 = layer.lora_B.detach().double().requires_grad_(True)
    reference = x64 @ weight_out_in.t() + base.bias.detach().double() + scaling * (x64 @ A64.t()) @ B64.t()
    (reference * upstream.double()).sum().backward()

    assert relative_error(layer(x), reference) < REL_TOL
    assert relative_error(layer.lora_A.grad, A64.grad) < REL_TOL
    assert relative_error(layer.lora_B.grad, B64.grad) < REL_TOL
    assert relative_error(x.grad, x64.grad) < REL_TOL


def test_layer_passes_its_kernel_choice_to_lora_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple] = []
    real = peftlab.kernels.lora_linear

    def recording(x, weight, bias, lora_A, lora_B, scaling, dropout_p, training, backend="auto"):
        seen.append((weight.shape, scaling, dropout_p, training, backend))
        return real(x, weight, bias, lora_A, lora_B, scaling, dropout_p, training, backend="torch")

    monkeypatch.setattr(peftlab.kernels, "lora_linear", recording)
    layer = LoRALinear(Conv1D(12, 8), r=2, scaling=0.5, dropout=0.1, kernel="triton")
    layer.train()
    layer(torch.randn(2, 8))
    assert seen == [(torch.Size([12, 8]), 0.5, 0.1, True, "triton")]  # Conv1D weight passed as (out, in)


# --- merging ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_merge_adds_the_exact_delta_and_unmerge_restores_the_weights(preset: str) -> None:
    model = build_model(preset, seed=0).eval()
    wrapped = peftlab.apply(model, LoRAConfig(r=4, alpha=12.0, target_modules="all-linear", use_rslora=True))
    randomize_adapter(wrapped, seed=9)
    layers = lora_layers(model)
    originals = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
    batch = random_batch(preset, seed=4)
    unmerged_logits = wrapped(**batch).logits

    wrapped.merge()
    scaling = 12.0 / math.sqrt(4)
    for name, layer in layers.items():
        delta = scaling * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
        if isinstance(layer.base_layer, Conv1D):
            delta = delta.t()
        expected = originals[name].double() + delta
        assert relative_error(layer.base_layer.weight, expected) < 1e-6, name
    merged_logits = wrapped(**batch).logits
    assert relative_error(merged_logits, unmerged_logits) < REL_TOL

    wrapped.merge()  # merging twice must not add the delta twice
    assert relative_error(wrapped(**batch).logits, unmerged_logits) < REL_TOL

    wrapped.unmerge()
    for name, layer in layers.items():
        assert (layer.base_layer.weight - originals[name]).abs().max() <= 1e-6, name
    assert relative_error(wrapped(**batch).logits, unmerged_logits) < REL_TOL


def test_merged_logits_match_peft_merge_and_unload() -> None:
    config = LoRAConfig(r=8, alpha=16.0, target_modules=["c_attn", "c_fc"])
    ours_base, theirs_base = twin_models("tiny-gpt2")
    ours = peftlab.apply(ours_base, config)
    theirs = get_peft_model(theirs_base, peft_config_like(config))
    randomize_adapter(ours, seed=21)
    copy_adapter_into_peft(ours, theirs)
    ours.merge()
    plain = theirs.merge_and_unload()
    batch = random_batch("tiny-gpt2", seed=22)
    assert relative_error(ours(**batch).logits, plain(**batch).logits) < REL_TOL


# --- dtypes, freezing, trainability ----------------------------------------------------------------


def test_bf16_base_with_fp32_adapter_runs_and_matches_peft() -> None:
    config = LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "gate_proj"])
    ours_base, theirs_base = twin_models("tiny-llama", dtype="bfloat16")
    ours = peftlab.apply(ours_base, config)
    theirs = get_peft_model(theirs_base, peft_config_like(config))
    randomize_adapter(ours, seed=31)
    copy_adapter_into_peft(ours, theirs)
    for layer in lora_layers(ours_base).values():
        assert layer.base_layer.weight.dtype == torch.bfloat16
        assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32

    batch = random_batch("tiny-llama", seed=32)
    logits = ours(**batch).logits
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    expected = theirs(**batch).logits
    assert relative_error(logits, expected) < 1e-2  # same ops in bf16; tolerance of bf16 rounding
    logits.float().sum().backward()
    for layer in lora_layers(ours_base).values():
        assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_A.grad.abs().sum() > 0


def test_base_weights_are_frozen_and_never_copied() -> None:
    model = build_model("tiny-gpt2", seed=0)
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    wrapped = peftlab.apply(model, LoRAConfig(r=4, target_modules="all-linear"))
    for name, layer in lora_layers(model).items():
        assert layer.base_layer.weight.data_ptr() == pointers[f"{name}.weight"]
        assert layer.base_layer.bias.data_ptr() == pointers[f"{name}.bias"]
    trainable = [name for name, _ in wrapped.base_model.named_parameters() if _.requires_grad]
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    after = {p.data_ptr() for name, p in model.named_parameters() if not p.requires_grad}
    assert after == set(pointers.values())


def test_sequence_classification_trains_the_head_and_default_targets() -> None:
    model = build_model("tiny-bert", task="sequence_classification", seed=0)
    wrapped = peftlab.apply(model, LoRAConfig(r=2, task_type="SEQ_CLS"))
    assert sorted({name.rsplit(".", 1)[-1] for name in lora_layers(model)}) == ["query", "value"]
    assert wrapped.method.plan.modules_to_save == ["classifier"]
    assert model.classifier.weight.requires_grad and model.classifier.bias.requires_grad
    assert not model.bert.pooler.dense.weight.requires_grad
    state = wrapped.method.adapter_state_dict(model)
    assert torch.equal(state["base_model.model.classifier.weight"], model.classifier.weight)


@pytest.mark.parametrize(
    ("preset", "expected_leaf_names"),
    [
        ("tiny-llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
        ("tiny-gpt2", ["c_attn", "c_fc", "c_proj"]),
    ],
)
def test_all_linear_skips_the_output_head_and_saves_an_equivalent_target_list(preset, expected_leaf_names) -> None:
    model = build_model(preset, seed=0)
    wrapped = peftlab.apply(model, LoRAConfig(r=2, target_modules="all-linear"))
    names = list(lora_layers(model))
    assert "lm_head" not in names
    assert sorted({name.rsplit(".", 1)[-1] for name in names}) == expected_leaf_names
    saved = wrapped.method.adapter_config(model)["target_modules"]
    again = plan_attach(build_model(preset, seed=0), LoRAConfig(r=2, target_modules=saved))
    assert again.targets == names


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"r": 0}, "r"),
        ({"r": -2}, "r"),
        ({"r": 2.5}, "r"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"use_rslora": "yes"}, "use_rslora"),
        ({"bias": "some"}, "bias"),
        ({"kernel": "cuda"}, "kernel"),
        ({"task_type": "causal_lm"}, "task_type"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": "(unclosed"}, "target_modules"),
        ({"target_modules": ["q_proj", ""]}, "target_modules"),
        ({"modules_to_save": "classifier"}, "modules_to_save"),
    ],
)
def test_bad_config_values_raise_a_clear_error(overrides: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=f"LoRAConfig: field '{field_name}'"):
        LoRAConfig(**overrides)


def snapshot(model: nn.Module) -> dict[str, tuple[int, bool, torch.Tensor]]:
    """Where each parameter lives, whether it trains, and a copy of its values."""
    return {name: (p.data_ptr(), p.requires_grad, p.detach().clone()) for name, p in model.named_parameters()}


def assert_unchanged(model: nn.Module, before: dict[str, tuple[int, bool, torch.Tensor]], atol: float = 0.0) -> None:
    """No LoRA layer left behind; every parameter where it was, as trainable as it was, holding its values."""
    assert not lora_layers(model)
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, (pointer, requires_grad, value) in before.items():
        assert after[name][0] == pointer and after[name][1] == requires_grad, name
        assert (after[name][2] - value).abs().max() <= atol, name


@pytest.mark.parametrize(
    ("preset", "config", "message"),
    [
        ("tiny-llama", LoRAConfig(target_modules=["q_proj", "qproj"]), r"entries \['qproj'\] match no module.*q_proj"),
        ("tiny-llama", LoRAConfig(target_modules=r".*\.attention\.query"), "regex .* matches no full module name.*q_proj"),
        ("tiny-llama", LoRAConfig(target_modules=["mlp"]), "selects 'model.layers.0.mlp', a LlamaMLP"),
        ("tiny-llama", LoRAConfig(target_modules=["embed_tokens"]), "a Embedding"),
        ("tiny-gpt2", LoRAConfig(target_modules=["q_proj"]), r"entries \['q_proj'\] match no module.*c_attn"),
        ("tiny-bert", LoRAConfig(modules_to_save=["head"]), r"'modules_to_save' entry 'head' matches no module"),
        ("tiny-bert", LoRAConfig(target_modules=["classifier"], task_type="SEQ_CLS"), "modules_to_save"),
    ],
)
def test_a_config_that_does_not_fit_the_model_leaves_it_unchanged(preset, config, message) -> None:
    model = build_model(preset, task=TASKS[preset], seed=0)
    before = snapshot(model)
    with pytest.raises(AdapterError, match=message):
        peftlab.apply(model, config)
    assert_unchanged(model, before)


def test_applying_lora_to_a_model_that_already_has_it_is_refused() -> None:
    model = build_model("tiny-llama", seed=0)
    peftlab.apply(model, LoRAConfig(r=2))
    with pytest.raises(AdapterError, match="already has LoRA layers"):
        peftlab.apply(model, LoRAConfig(r=2))


def test_detach_restores_the_original_modules_and_trainability() -> None:
    model = build_model("tiny-gpt2", seed=0)
    model.transformer.wte.weight.requires_grad_(False)
    before = snapshot(model)
    originals = {name: module for name, module in model.named_modules()}
    wrapped = peftlab.apply(model, LoRAConfig(r=4, target_modules="all-linear", bias="lora_only"))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_()
    wrapped.merge()
    wrapped.method.detach_from(model)
    assert_unchanged(model, before, atol=1e-6)  # merged weights are unmerged first, exact to rounding
    assert all(module is originals[name] for name, module in model.named_modules())


# --- the Triton kernel path ------------------------------------------------------------------------

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 on the GPU: Triton's tl.dot may use TF32. The CPU interpreter computes in fp32 but sums in another
# order than torch, and the gradients of the first layers carry that through the whole network.
TRITON_REL_TOL = 2e-3 if TRITON_DEVICE == "cuda" else 1e-4


@pytest.mark.skipif(
    TRITON_DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)",
)
@pytest.mark.parametrize(("preset", "targets"), [("tiny-llama", ["q_proj", "down_proj"]), ("tiny-gpt2", ["c_attn"])])
def test_triton_kernel_path_matches_peft(preset: str, targets: list[str]) -> None:
    config = LoRAConfig(r=4, alpha=8.0, target_modules=targets, kernel="triton")
    ours_base, theirs_base = twin_models(preset)
    ours = peftlab.apply(ours_base.to(TRITON_DEVICE), config)
    theirs = get_peft_model(theirs_base.to(TRITON_DEVICE), peft_config_like(config))
    randomize_adapter(ours, seed=51)
    copy_adapter_into_peft(ours, theirs)
    batch = {name: t.to(TRITON_DEVICE) for name, t in random_batch(preset, seed=52, batch=1, length=6).items()}
    ours_logits = ours(**batch).logits
    theirs_logits = theirs(**batch).logits
    assert relative_error(ours_logits, theirs_logits) < TRITON_REL_TOL
    upstream = torch.randn(ours_logits.shape, generator=torch.Generator().manual_seed(53)).to(TRITON_DEVICE)
    (ours_logits * upstream).sum().backward()
    (theirs_logits * upstream).sum().backward()
    theirs_parameters = dict(theirs.named_parameters())
    for name, parameter in ours.base_model.named_parameters():
        if parameter.requires_grad:
            expected = theirs_parameters[peft_parameter_name(name, [])].grad
            assert relative_error(parameter.grad, expected) < TRITON_REL_TOL, name


def test_config_lists_from_omegaconf_become_plain_lists() -> None:
    from omegaconf import OmegaConf

    config = LoRAConfig(target_modules=OmegaConf.create(["q_proj", "v_proj"]), modules_to_save=OmegaConf.create(["score"]))
    assert config.target_modules == ["q_proj", "v_proj"] and type(config.target_modules) is list
    assert config.modules_to_save == ["score"] and type(config.modules_to_save) is list
