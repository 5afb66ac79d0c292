"""Shared-input fusion in the LoRA method: sibling layers (q/k/v, gate/up) served from one fused call.

Checked against the same model with fusion off, against PEFT on identical weights and against a float64
per-layer reference, with fresh random inputs, forward and gradients. The Triton kernels run in the CPU
interpreter without a GPU (tests/conftest.py), so models and batches stay tiny.
"""

from __future__ import annotations

import copy
import gc
import os
import weakref
from collections import Counter

import peftlab.kernels
import pytest
import torch
from peft import get_peft_model
from test_kernel_lora_linear import ran_fused_kernel
from test_lora import (
    copy_adapter_into_peft,
    peft_config_like,
    peft_parameter_name,
    random_batch,
    randomize_adapter,
    relative_error,
    twin_models,
)
from torch import nn

import peftlab
from peftlab import AdapterError, LoRAConfig
from peftlab.methods.lora import LoRALinear, lora_layers
from peftlab.methods.lora_shared_input import MAX_BROKEN_ROUNDS, SharedInputGroup, find_shared_input_siblings
from peftlab.models import build_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
    pytest.mark.skipif(
        not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
        reason="the Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 on the GPU: Triton's tl.dot may use TF32; the CPU interpreter computes in fp32.
REL_TOL = 2e-3 if DEVICE == "cuda" else 1e-5
LLAMA_SIBLINGS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
QKV = ["q_proj", "k_proj", "v_proj"]  # fewer interpreted kernel launches where one sibling set suffices
TASK_TYPES = {"tiny-llama": "CAUSAL_LM", "tiny-bert": "SEQ_CLS"}


class KernelCalls:
    """Counts the per-layer and the fused kernel calls the LoRA layers make (wrapping the real ones)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self.fused_ran_triton: list[bool] = []
        shared, single = peftlab.kernels.lora_linear_shared_input, peftlab.kernels.lora_linear

        def counting_shared(*args, **kwargs):
            self.counts["shared"] += 1
            outputs = shared(*args, **kwargs)
            if torch.is_grad_enabled():
                self.fused_ran_triton.append(all(ran_fused_kernel(y) for y in outputs))
            return outputs

        def counting_single(*args, **kwargs):
            self.counts["single"] += 1
            return single(*args, **kwargs)

        monkeypatch.setattr(peftlab.kernels, "lora_linear_shared_input", counting_shared)
        monkeypatch.setattr(peftlab.kernels, "lora_linear", counting_single)

    def reset(self) -> None:
        self.counts.clear()
        self.fused_ran_triton.clear()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> KernelCalls:
    return KernelCalls(monkeypatch)


def lora_model(
    fuse: str, targets: list[str] = LLAMA_SIBLINGS, preset: str = "tiny-llama", **settings
) -> peftlab.PeftLabModel:
    """A tiny model (seed 0) with random adapter weights (seed 7); ``kernel="triton"`` unless given."""
    settings = {"r": 4, "alpha": 8.0, "kernel": "triton", "task_type": TASK_TYPES[preset], **settings}
    config = LoRAConfig(target_modules=targets, fuse_shared_input=fuse, **settings)
    model = peftlab.apply(twin_models(preset)[0].to(DEVICE), config)
    randomize_adapter(model, seed=7)
    return model


def groups_of(model: peftlab.PeftLabModel) -> list[SharedInputGroup]:
    return model.method.shared_input_groups


def backward_with_random_upstream(output: torch.Tensor, seed: int) -> None:
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed)).to(output.device)
    (output * upstream).sum().backward()


def adapter_grads(model: peftlab.PeftLabModel) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.base_model.named_parameters() if p.requires_grad}


def assert_same_adapter_grads(
    actual: peftlab.PeftLabModel, expected: peftlab.PeftLabModel, tol: float
) -> None:
    expected_grads = adapter_grads(expected)
    for name, grad in adapter_grads(actual).items():
        assert grad is not None and expected_grads[name] is not None, name
        assert relative_error(grad, expected_grads[name]) < tol, name


def layer_reference(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """``x·Wᵀ + b + s·x·Aᵀ·Bᵀ`` in float64 (eval mode: no dropout)."""
    x64 = x.detach().double()
    y = x64 @ layer.weight_out_in().double().t()
    y = y + layer.scaling * (x64 @ layer.lora_A.double().t()) @ layer.lora_B.double().t()
    return y if layer.bias is None else y + layer.bias.double()


def attention_members(
    model: peftlab.PeftLabModel, layer: int = 0
) -> tuple[LoRALinear, LoRALinear, LoRALinear]:
    attention = model.base_model.model.layers[layer].self_attn
    return attention.q_proj, attention.k_proj, attention.v_proj


def hidden_states(seed: int, tokens: int = 5, width: int = 64) -> torch.Tensor:
    return torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


# --- numerics: fused == unfused == PEFT -----------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "targets"), [("tiny-llama", LLAMA_SIBLINGS), ("tiny-bert", ["query", "key", "value"])]
)
def test_fused_siblings_match_fusion_off_and_peft_logits_and_every_gradient(
    preset: str, targets: list[str], calls: KernelCalls
) -> None:
    fused, unfused = lora_model("on", targets, preset), lora_model("off", targets, preset)
    unfused.load_state_dict(fused.state_dict())
    batch = {k: v.to(DEVICE) for k, v in random_batch(preset, seed=12, batch=1, length=6).items()}
    num_groups = len(groups_of(fused))
    assert num_groups == (4 if preset == "tiny-llama" else 2) and not groups_of(unfused)

    fused_logits = fused(**batch).logits
    assert calls.counts == {"shared": num_groups}  # every LoRA layer was served by a fused call
    assert calls.fused_ran_triton == [True] * num_groups
    calls.reset()
    unfused_logits = unfused(**batch).logits
    assert calls.counts == {"single": len(lora_layers(unfused.base_model))}
    assert relative_error(fused_logits, unfused_logits) < REL_TOL

    config = LoRAConfig(r=4, alpha=8.0, target_modules=targets, task_type=fused.peft_config.task_type)
    theirs = get_peft_model(twin_models(preset)[1].to(DEVICE), peft_config_like(config))
    copy_adapter_into_peft(fused, theirs)
    theirs_logits = theirs(**batch).logits
    assert relative_error(fused_logits, theirs_logits) < REL_TOL

    for logits in (fused_logits, unfused_logits, theirs_logits):
        backward_with_random_upstream(logits, seed=100)  # the same upstream gradient for all three
    assert_same_adapter_grads(fused, unfused, REL_TOL)
    theirs_parameters = dict(theirs.named_parameters())
    saved = config.modules_to_save_entries()
    for name, grad in adapter_grads(fused).items():
        assert relative_error(grad, theirs_parameters[peft_parameter_name(name, saved)].grad) < REL_TOL, name
    assert not any(group.holds_tensors for group in groups_of(fused))


def test_fused_dropout_draws_the_same_per_layer_masks_as_separate_layers() -> None:
    """In training, each member keeps its own mask, drawn exactly as the per-layer path draws it."""
    fused = lora_model("on", QKV, dropout=0.3)
    unfused = lora_model("off", QKV, dropout=0.3)
    fused.train()
    unfused.train()
    batch = {k: v.to(DEVICE) for k, v in random_batch("tiny-llama", seed=21, batch=1, length=6).items()}
    outputs = {}
    for name, model in (("fused", fused), ("unfused", unfused)):
        torch.manual_seed(5)
        outputs[name] = model(**batch).logits
        backward_with_random_upstream(outputs[name], seed=22)
    assert relative_error(outputs["fused"], outputs["unfused"]) < REL_TOL
    assert_same_adapter_grads(fused, unfused, REL_TOL)
    fused.eval()
    assert relative_error(fused(**batch).logits, outputs["fused"]) > 1e-3  # the masks mattered


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_recomputes_fused_rounds_correctly(
    use_reentrant: bool, calls: KernelCalls
) -> None:
    fused, unfused = lora_model("on", QKV, dropout=0.2), lora_model("off", QKV, dropout=0.2)
    fused.base_model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
    )
    if use_reentrant:
        fused.base_model.enable_input_require_grads()  # frozen embeddings: reentrant checkpoints need a grad input
    fused.train()
    unfused.train()
    batch = {k: v.to(DEVICE) for k, v in random_batch("tiny-llama", seed=31, batch=1, length=6).items()}
    torch.manual_seed(8)
    fused_logits = fused(**batch).logits
    backward_with_random_upstream(fused_logits, seed=32)
    num_groups = len(groups_of(fused))
    assert calls.counts == {"shared": 2 * num_groups}  # forward, then the recomputation in backward
    torch.manual_seed(8)
    unfused_logits = unfused(**batch).logits
    backward_with_random_upstream(unfused_logits, seed=32)
    assert relative_error(fused_logits, unfused_logits) < REL_TOL
    assert_same_adapter_grads(fused, unfused, REL_TOL)
    assert not any(group.holds_tensors for group in groups_of(fused))


def test_no_grad_generation_gives_the_same_tokens_as_fusion_off(calls: KernelCalls) -> None:
    fused, unfused = lora_model("on", QKV), lora_model("off", QKV)
    unfused.load_state_dict(fused.state_dict())
    prompt = torch.randint(3, 512, (1, 4), generator=torch.Generator().manual_seed(41)).to(DEVICE)
    settings = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    fused_tokens = fused.generate(input_ids=prompt, **settings)
    assert calls.counts["shared"] == 3 * len(groups_of(fused)) and calls.counts["single"] == 0
    assert torch.equal(fused_tokens, unfused.generate(input_ids=prompt, **settings))
    assert not any(group.holds_tensors for group in groups_of(fused))

    calls.reset()
    with torch.no_grad():
        no_grad_logits = fused(input_ids=prompt).logits
    with torch.inference_mode():  # inference tensors carry no version counter: each layer runs alone
        inference_logits = fused(input_ids=prompt).logits
    assert calls.counts == {"shared": len(groups_of(fused)), "single": len(lora_layers(fused.base_model))}
    assert relative_error(inference_logits, no_grad_logits) < REL_TOL


# --- run-time confirmation and fallback ------------------------------------------------------------


def test_a_sibling_called_with_another_tensor_runs_its_own_path(calls: KernelCalls) -> None:
    model = lora_model("on", QKV)
    q, k, v = attention_members(model)
    x, other = hidden_states(51), hidden_states(52)
    outputs = (q(x), k(other), v(x))  # k breaks the round; v's cached output is dropped, not served
    assert calls.counts == {"shared": 1, "single": 2}
    for layer, y, inputs in zip((q, k, v), outputs, (x, other, x), strict=True):
        assert relative_error(y, layer_reference(layer, inputs)) < REL_TOL
    assert not q.shared_input_group.holds_tensors


def test_a_sibling_is_served_only_for_the_unchanged_tensor_in_the_same_mode(calls: KernelCalls) -> None:
    model = lora_model("on", QKV)
    q, k, _ = attention_members(model)
    x = hidden_states(61)
    q(x)
    x.mul_(2.0)  # same object, new contents: the cached outputs are stale
    k_out = k(x)
    assert relative_error(k_out, layer_reference(k, x)) < REL_TOL
    assert calls.counts == {"shared": 1, "single": 1}

    calls.reset()
    with torch.no_grad():
        q(x)
    k_out = k(x)  # gradients on now: a no-grad result would cut k's adapter out of the graph
    assert calls.counts == {"shared": 1, "single": 1} and k_out.requires_grad
    k_out.sum().backward()
    assert k.lora_A.grad is not None

    calls.reset()
    q(x)
    with torch.no_grad():
        k.lora_B.mul_(-1.0)  # k's adapter changed after the fused call
    assert relative_error(k(x), layer_reference(k, x)) < REL_TOL
    assert calls.counts == {"shared": 1, "single": 1}


def test_any_call_order_is_served_and_a_repeated_member_starts_a_new_round(calls: KernelCalls) -> None:
    model = lora_model("on", QKV)
    q, k, v = attention_members(model)
    x = hidden_states(71)
    outputs = {"k": k(x), "v": v(x), "q": q(x)}
    assert calls.counts == {"shared": 1}
    for layer, name in ((q, "q"), (k, "k"), (v, "v")):
        assert relative_error(outputs[name], layer_reference(layer, x)) < REL_TOL
    assert not q.shared_input_group.holds_tensors

    calls.reset()
    q(x)
    again = q(x)  # k and v never took their outputs: the round closes and a new one starts
    assert calls.counts == {"shared": 2}
    assert relative_error(again, layer_reference(q, x)) < REL_TOL


class CrossAttention(nn.Module):
    """q reads the decoder states, k and v the encoder states: siblings by name, not by input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))

    def forward(self, decoder: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        scores = self.q_proj(decoder) @ self.k_proj(encoder).transpose(-1, -2)
        return scores.softmax(-1) @ self.v_proj(encoder)


def test_siblings_that_never_share_their_input_stay_correct_and_stop_fusing(calls: KernelCalls) -> None:
    models = {}
    for fuse in ("on", "off"):
        torch.manual_seed(3)
        config = LoRAConfig(
            r=2,
            alpha=4.0,
            target_modules=["q_proj", "k_proj", "v_proj"],
            kernel="triton",
            fuse_shared_input=fuse,
        )
        models[fuse] = peftlab.apply(CrossAttention(16).to(DEVICE), config)
    randomize_adapter(models["on"], seed=81)
    models["off"].load_state_dict(models["on"].state_dict())
    (group,) = groups_of(models["on"])
    for step in range(MAX_BROKEN_ROUNDS + 1):
        decoder, encoder = hidden_states(90 + step, 3, 16), hidden_states(95 + step, 4, 16)
        outputs = {fuse: model(decoder, encoder) for fuse, model in models.items()}
        for output in outputs.values():
            backward_with_random_upstream(output, seed=step)
        assert relative_error(outputs["on"], outputs["off"]) < REL_TOL
        assert_same_adapter_grads(models["on"], models["off"], REL_TOL)
        assert not group.holds_tensors
    # one wasted fused call per broken round, then the group gives up
    assert calls.counts["shared"] == MAX_BROKEN_ROUNDS and not group.enabled


def test_a_merged_member_keeps_its_group_on_the_per_layer_path(calls: KernelCalls) -> None:
    fused, unfused = lora_model("on", ["q_proj", "v_proj"]), lora_model("off", ["q_proj", "v_proj"])
    unfused.load_state_dict(fused.state_dict())
    for model in (fused, unfused):
        model.base_model.model.layers[0].self_attn.q_proj.merge()
    batch = {k: v.to(DEVICE) for k, v in random_batch("tiny-llama", seed=101, batch=1, length=5).items()}
    logits = fused(**batch).logits
    assert calls.counts == {"shared": 1, "single": 1}  # layer 1 fused; layer 0's v alone, q merged
    assert relative_error(logits, unfused(**batch).logits) < REL_TOL


# --- memory: nothing cached outlives a forward -----------------------------------------------------


def test_an_unfinished_round_is_released_by_the_next_forward() -> None:
    model = lora_model("on", QKV)
    q, _, _ = attention_members(model, layer=1)
    x = hidden_states(111)
    reference_to_x = weakref.ref(x)
    with torch.no_grad():
        q(x)  # k and v never come: the round stays open and keeps x
    del x
    gc.collect()
    assert reference_to_x() is not None and q.shared_input_group.holds_tensors
    batch = random_batch("tiny-llama", seed=112, batch=1, length=4)
    model(**{k: v.to(DEVICE) for k, v in batch.items()})
    gc.collect()
    assert reference_to_x() is None
    assert not any(group.holds_tensors for group in groups_of(model))


def test_a_forward_that_fails_half_way_leaves_no_round_open() -> None:
    model = lora_model("on", QKV)
    q, k, _ = attention_members(model)

    def fail(*_: object) -> None:
        raise RuntimeError("k_proj failed")

    k.register_forward_pre_hook(fail)  # q's fused call has run and cached k's and v's outputs
    batch = random_batch("tiny-llama", seed=115, batch=1, length=4)
    with pytest.raises(RuntimeError, match="k_proj failed"):
        model(**{name: t.to(DEVICE) for name, t in batch.items()})
    assert not q.shared_input_group.holds_tensors


def test_a_deep_copy_fuses_its_own_layers_and_a_shallow_copy_runs_alone(calls: KernelCalls) -> None:
    model = lora_model("on", QKV, kernel="torch")
    twin = copy.deepcopy(model)
    batch = {k: v.to(DEVICE) for k, v in random_batch("tiny-llama", seed=141, batch=1, length=4).items()}
    assert relative_error(twin(**batch).logits, model(**batch).logits) == 0.0
    assert calls.counts == {"shared": 2 * len(groups_of(model))}
    assert all(member.shared_input_group is group for group in groups_of(twin) for member in group.members)

    calls.reset()
    q, _, _ = attention_members(model)
    x = hidden_states(142)
    assert relative_error(copy.copy(q)(x), layer_reference(q, x)) < REL_TOL
    assert calls.counts == {"single": 1}


def test_release_drops_cached_outputs_and_detach_unlinks_members() -> None:
    model = lora_model("on", QKV)
    q, _, _ = attention_members(model)
    q(hidden_states(121))
    model.method.release_shared_inputs()
    assert not q.shared_input_group.holds_tensors
    layers = list(lora_layers(model.base_model).values())
    model.method.detach_from(model.base_model)
    assert all(layer.shared_input_group is None for layer in layers)
    assert not groups_of(model)


# --- configuration and structure -------------------------------------------------------------------


def _first_forward_counts(model: peftlab.PeftLabModel, calls: KernelCalls) -> Counter[str]:
    calls.reset()
    model(**{k: v.to(DEVICE) for k, v in random_batch("tiny-llama", seed=131, batch=1, length=3).items()})
    return Counter(calls.counts)


@pytest.mark.parametrize(
    ("fuse", "kernel", "expect_fused"),
    [("auto", "triton", True), ("auto", "torch", False), ("off", "triton", False), ("on", "torch", True)],
)
def test_fuse_modes_pick_where_the_fused_call_runs(
    fuse: str, kernel: str, expect_fused: bool, calls: KernelCalls
) -> None:
    model = lora_model(fuse, QKV, kernel=kernel)
    counts = _first_forward_counts(model, calls)
    num_layers = len(lora_layers(model.base_model))
    expected = {"shared": len(groups_of(model))} if expect_fused else {"single": num_layers}
    assert counts == expected


@pytest.mark.skipif(DEVICE == "cuda", reason="on CUDA 'auto' runs the Triton kernels, so it fuses")
def test_auto_does_not_fuse_cpu_tensors_that_take_the_reference_path(calls: KernelCalls) -> None:
    model = lora_model("auto", kernel="auto")
    assert len(groups_of(model)) == 4
    assert _first_forward_counts(model, calls) == {"single": len(lora_layers(model.base_model))}


def test_groups_follow_the_module_structure() -> None:
    llama = peftlab.apply(
        build_model("tiny-llama", seed=0), LoRAConfig(target_modules="all-linear", kernel="torch")
    )
    found = {(group.parent, group.names) for group in groups_of(llama)}
    layers = llama.base_model.model.layers
    expected = {(layer.self_attn, ("q_proj", "k_proj", "v_proj")) for layer in layers}
    expected |= {(layer.mlp, ("gate_proj", "up_proj")) for layer in layers}
    assert found == expected  # o_proj and down_proj read other tensors
    assert all(member.shared_input_group is group for group in groups_of(llama) for member in group.members)

    assert find_shared_input_siblings(
        ["a.self_attn.q_proj", "a.self_attn.v_proj", "b.q_proj", "c.k_proj"]
    ) == [("a.self_attn", ("q_proj", "v_proj"))]
    bert = peftlab.apply(
        build_model("tiny-bert", task="sequence_classification", seed=0),
        LoRAConfig(target_modules="all-linear", task_type="SEQ_CLS"),
    )
    assert {group.names for group in groups_of(bert)} == {("query", "key", "value")}
    gpt2 = peftlab.apply(build_model("tiny-gpt2", seed=0), LoRAConfig(target_modules="all-linear"))
    assert not groups_of(gpt2)  # c_attn is already one linear for q/k/v


@pytest.mark.parametrize("value", ["yes", "", True, None])
def test_a_bad_fuse_setting_names_the_field(value: object) -> None:
    with pytest.raises(AdapterError, match="fuse_shared_input"):
        LoRAConfig(fuse_shared_input=value)


def test_the_fuse_setting_is_not_written_to_the_adapter_file(tmp_path) -> None:
    model = lora_model("on", kernel="torch")
    directory = model.save_adapter(tmp_path / "adapter")
    text = (directory / "adapter_config.json").read_text()
    assert "fuse" not in text
    loaded = peftlab.load_adapter(build_model("tiny-llama", seed=0), directory)
    assert loaded.peft_config.fuse_shared_input == "auto"
