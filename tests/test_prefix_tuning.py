"""Prefix tuning checked against Hugging Face PEFT on identical weights and against float64 references.

PEFT puts its prefix in the KV cache, so its real tokens sit at positions T..T+L-1; ours keep 0..L-1.
Every comparison with PEFT therefore passes ``position_ids = arange(T, T+L)`` to our model.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path

import peft
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, T5Config, T5ForConditionalGeneration

import peftlab
from peftlab import AdapterError, PrefixTuningConfig
from peftlab.models import build_model

NUM_VIRTUAL_TOKENS = 3
LENGTH = 6
VOCAB = 512
REL_TOLERANCE = 1e-5
CAUSAL_MODELS = ["tiny-llama", "tiny-gpt2"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def batch_with_left_padding(seed: int, length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids for two rows; the second row is left-padded by two positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, :2] = 0
    return input_ids, attention_mask


def peft_positions(batch: int = 2, length: int = LENGTH) -> torch.Tensor:
    """The positions PEFT gives real tokens behind a prefix of NUM_VIRTUAL_TOKENS."""
    return torch.arange(NUM_VIRTUAL_TOKENS, NUM_VIRTUAL_TOKENS + length).expand(batch, -1)


def ours_and_peft(
    name: str, projection: bool = False, task: str = "causal_lm", **config: object
) -> tuple[peftlab.PeftLabModel, peft.PeftModel]:
    """Our prefix tuning and PEFT's on two copies of one model, with PEFT's fresh random encoder copied into ours."""
    peft_task = "CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS"
    ours = peftlab.apply(
        build_model(name, task=task).eval(),
        PrefixTuningConfig(
            num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=projection, task_type=peft_task, **config
        ),
    )
    theirs = peft.get_peft_model(
        build_model(name, task=task).eval(),
        peft.PrefixTuningConfig(task_type=peft_task, num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=projection),
    )
    ours.method.prefix_encoder.load_state_dict(theirs.prompt_encoder["default"].state_dict())
    return ours, theirs


def peft_classification_logits(
    theirs: peft.PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
) -> torch.Tensor:
    """PEFT's prefix-tuning classification forward written out: its prefix cache (``get_prompt``) in front of BERT's
    keys and values, the prefix always attended to, then BERT's pooler and the head PEFT trains. PEFT 0.21.2 looks
    for a forward argument named ``past_key_values``, which transformers 5.24 renamed ``cache``, and refuses BERT
    there; written out, the reference runs on both sides of the rename."""
    bert, head = theirs.base_model.bert, theirs.base_model
    batch = input_ids.shape[0]
    mask = torch.cat([attention_mask.new_ones(batch, NUM_VIRTUAL_TOKENS), attention_mask], dim=1)
    cache_argument = "cache" if "cache" in inspect.signature(bert.forward).parameters else "past_key_values"
    outputs = bert(input_ids=input_ids, attention_mask=mask, **inputs, **{cache_argument: theirs.get_prompt(batch)})
    return head.classifier(head.dropout(outputs.pooler_output))


# --- forward and gradients against PEFT ---------------------------------------------------------------------


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_logits_loss_and_prefix_gradients_match_peft(name: str, projection: bool) -> None:
    ours, theirs = ours_and_peft(name, projection)
    input_ids, attention_mask = batch_with_left_padding(seed=1)
    labels = input_ids.masked_fill(attention_mask == 0, -100)

    out = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels, position_ids=peft_positions())
    ref = theirs(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    ref.loss.backward()

    assert out.logits.shape == (2, LENGTH, VOCAB)
    assert relative_error(out.logits, ref.logits) < REL_TOLERANCE
    assert relative_error(out.loss, ref.loss) < REL_TOLERANCE
    peft_parameters = dict(theirs.prompt_encoder["default"].named_parameters())
    ours_parameters = dict(ours.method.prefix_encoder.named_parameters())
    assert set(ours_parameters) == set(peft_parameters)
    for key, parameter in ours_parameters.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key
        assert relative_error(parameter.grad, peft_parameters[key].grad) < REL_TOLERANCE, key


def test_gqa_prefix_has_key_value_heads_and_only_the_prefix_trains() -> None:
    ours, _ = ours_and_peft("tiny-llama")
    keys, values = ours.method.layer_prefix(1)
    assert keys.shape == values.shape == (2, NUM_VIRTUAL_TOKENS, 16)  # 2 KV heads of size 16 (4 query heads)
    assert [name for name, _ in ours.named_trainable_parameters()] == ["method.prefix_encoder.embedding.weight"]
    assert ours.method.prefix_encoder.embedding.weight.shape == (NUM_VIRTUAL_TOKENS, 2 * 2 * 32)


# --- float64 references -----------------------------------------------------------------------------------


def reference_llama_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prefix_keys: torch.Tensor,
    prefix_values: torch.Tensor,
    padding_mask: torch.Tensor,
) -> torch.Tensor:
    """Hand-written GQA attention with rotary embeddings over [prefix; causal real keys], padding masked."""
    batch, length, _ = hidden.shape
    config = attention.config
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, attention.head_dim

    def split(states: torch.Tensor, count: int) -> torch.Tensor:
        return states.view(batch, length, count, head_dim).transpose(1, 2)

    def rotate(states: torch.Tensor) -> torch.Tensor:
        half = head_dim // 2
        turned = torch.cat([-states[..., half:], states[..., :half]], dim=-1)
        return states * cos[:, None] + turned * sin[:, None]

    query = rotate(split(attention.q_proj(hidden), heads))
    key = rotate(split(attention.k_proj(hidden), kv_heads))
    value = split(attention.v_proj(hidden), kv_heads)
    key = torch.cat([prefix_keys.expand(batch, -1, -1, -1), key], dim=2).repeat_interleave(heads // kv_heads, dim=1)
    value = torch.cat([prefix_values.expand(batch, -1, -1, -1), value], dim=2).repeat_interleave(heads // kv_heads, dim=1)
    scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)
    positions = torch.arange(length)
    causal = positions[None, :] <= positions[:, None]
    real_visible = causal[None] & padding_mask[:, None, :].bool()
    prefix_visible = torch.ones(batch, length, prefix_keys.shape[-2], dtype=torch.bool)
    visible = torch.cat([prefix_visible, real_visible], dim=-1)[:, None]
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    output = (weights @ value).transpose(1, 2).reshape(batch, length, heads * head_dim)
    return attention.o_proj(output)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_layer_matches_a_float64_hand_written_reference(implementation: str, padded: bool) -> None:
    model = build_model("tiny-llama", dtype=torch.float64).eval()
    model.set_attn_implementation(implementation)
    ours = peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=True))
    ours.double()
    attention = model.model.layers[1].self_attn
    captured: dict[str, object] = {}

    def capture(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        captured.update(kwargs, output=output[0])

    handle = attention.register_forward_hook(capture, with_kwargs=True)
    input_ids, attention_mask = batch_with_left_padding(seed=2)
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    ours(input_ids=input_ids, attention_mask=None if not padded else attention_mask)
    handle.remove()

    kv_dim = 2 * 16
    table = ours.method.prefix_encoder.table().detach()  # [T, layers * 2 * kv_dim]: layer 1 keys are block 2
    prefix_keys = table[:, 2 * kv_dim : 3 * kv_dim].view(NUM_VIRTUAL_TOKENS, 2, 16).transpose(0, 1)
    prefix_values = table[:, 3 * kv_dim : 4 * kv_dim].view(NUM_VIRTUAL_TOKENS, 2, 16).transpose(0, 1)
    cos, sin = captured["position_embeddings"]  # type: ignore[misc]
    expected = reference_llama_attention(
        attention, captured["hidden_states"], cos, sin, prefix_keys, prefix_values, attention_mask  # type: ignore[arg-type]
    )
    real = attention_mask.bool()  # query rows of padding positions carry no meaning
    # Llama's eager attention takes its softmax in float32 even for float64 inputs.
    tolerance = 1e-12 if implementation == "sdpa" else 1e-6
    assert relative_error(captured["output"][real], expected[real]) < tolerance  # type: ignore[index]


def test_prefix_gradient_matches_float64_finite_differences() -> None:
    model = build_model("tiny-gpt2", dtype=torch.float64).eval()
    ours = peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True)).double()
    input_ids, attention_mask = batch_with_left_padding(seed=3)

    readout = torch.randn(2, LENGTH, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss() -> torch.Tensor:  # a float64 scalar (transformers' LM loss upcasts only to float32)
        return (ours(input_ids=input_ids, attention_mask=attention_mask).logits * readout).sum()

    loss().backward()
    parameter = ours.method.prefix_encoder.transform[0].weight
    step = 1e-6
    generator = torch.Generator().manual_seed(0)
    for flat_index in torch.randint(0, parameter.numel(), (4,), generator=generator).tolist():
        index = divmod(flat_index, parameter.shape[1])
        with torch.no_grad():
            parameter[index] += step
            upper = loss()
            parameter[index] -= 2 * step
            lower = loss()
            parameter[index] += step
        numeric = (upper - lower) / (2 * step)
        assert abs(numeric - parameter.grad[index]) <= 1e-6 * max(1.0, abs(numeric.item())), index


# --- masking, cache, generate ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_a_later_token_never_changes_an_earlier_output(name: str, with_mask: bool) -> None:
    ours, _ = ours_and_peft(name)
    input_ids, _ = batch_with_left_padding(seed=4)
    changed = input_ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % VOCAB
    mask = torch.ones_like(input_ids) if with_mask else None
    before = ours(input_ids=input_ids, attention_mask=mask).logits
    after = ours(input_ids=changed, attention_mask=mask).logits
    assert torch.equal(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_cache_holds_real_tokens_and_generate_with_cache_matches_no_cache(name: str) -> None:
    ours, _ = ours_and_peft(name)
    input_ids, attention_mask = batch_with_left_padding(seed=5)
    assert ours(input_ids=input_ids, attention_mask=attention_mask, use_cache=True).past_key_values.get_seq_length() == LENGTH

    settings = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)
    cached = ours.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    uncached = ours.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **settings)

    assert cached.sequences.shape == (2, LENGTH + 5)
    assert torch.equal(cached.sequences[:, :LENGTH], input_ids)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step_cached, step_uncached in zip(cached.scores, uncached.scores, strict=True):
        assert relative_error(step_cached, step_uncached) < REL_TOLERANCE
    base = build_model(name).eval()
    base_scores = base(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]
    assert relative_error(cached.scores[0], base_scores) > 1e-3  # the prefix takes part


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name: str) -> None:
    ours, _ = ours_and_peft(name, projection=True)
    ours.train()
    for module in ours.modules():  # dropout off, so both passes compute the same function
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    input_ids, attention_mask = batch_with_left_padding(seed=6)
    plain = ours(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
    plain.backward()
    plain_grads = [p.grad.clone() for p in ours.trainable_parameters()]
    ours.zero_grad()

    ours.gradient_checkpointing_enable()
    assert ours.base_model.model.gradient_checkpointing if name == "tiny-llama" else ours.base_model.transformer.gradient_checkpointing
    checkpointed = ours(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
    checkpointed.backward()
    assert relative_error(checkpointed, plain) < REL_TOLERANCE
    for grad, parameter in zip(plain_grads, ours.trainable_parameters(), strict=True):
        assert relative_error(parameter.grad, grad) < REL_TOLERANCE


# --- sequence classification -------------------------------------------------------------------------------


def test_bert_classification_matches_peft_and_trains_prefix_and_head() -> None:
    ours, theirs = ours_and_peft("tiny-bert", task="sequence_classification", modules_to_save=["classifier"])
    input_ids, attention_mask = batch_with_left_padding(seed=7)
    attention_mask = attention_mask.flip(1)  # BERT pads on the right
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 3:] = 1
    labels = torch.tensor([1, 0])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    out = ours(**inputs, labels=labels, position_ids=peft_positions())
    ref_logits = peft_classification_logits(theirs, **inputs)
    out.loss.backward()
    F.cross_entropy(ref_logits, labels).backward()

    assert relative_error(out.logits, ref_logits) < REL_TOLERANCE
    trained = {name for name, _ in ours.named_trainable_parameters()}
    assert trained == {"method.prefix_encoder.embedding.weight", "base_model.classifier.weight", "base_model.classifier.bias"}
    peft_head = theirs.base_model.classifier.modules_to_save["default"]
    assert relative_error(ours.base_model.classifier.weight.grad, peft_head.weight.grad) < REL_TOLERANCE
    peft_prefix_grad = theirs.prompt_encoder["default"].embedding.weight.grad
    assert relative_error(ours.method.prefix_encoder.embedding.weight.grad, peft_prefix_grad) < REL_TOLERANCE
    base = build_model("tiny-bert", task="sequence_classification").eval()
    assert relative_error(out.logits, base(**inputs).logits) > 1e-3  # the prefix takes part
    # Without a mask BERT attends everywhere (transformers passes no mask): same as an all-ones mask.
    unmasked = ours(input_ids=input_ids, token_type_ids=token_type_ids).logits
    all_ones = ours(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=torch.ones_like(input_ids)).logits
    assert relative_error(unmasked, all_ones) < REL_TOLERANCE


# --- adapter files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_saved_adapter_has_peft_layout_and_loads_in_peft(tmp_path: Path, name: str, projection: bool) -> None:
    ours, _ = ours_and_peft(name, projection)
    ours.save_adapter(tmp_path)

    kv_dim = 32 if name == "tiny-llama" else 64
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert set(tensors) == {"prompt_embeddings"}
    assert tensors["prompt_embeddings"].shape == (NUM_VIRTUAL_TOKENS, 2 * 2 * kv_dim)
    fields = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (fields["peft_type"], fields["task_type"], fields["prefix_projection"]) == ("PREFIX_TUNING", "CAUSAL_LM", projection)
    assert (fields["token_dim"], fields["num_layers"], fields["num_transformer_submodules"]) == (kv_dim, 2, 1)
    assert fields["num_attention_heads"] == (2 if name == "tiny-llama" else 4)

    loaded = peft.PeftModel.from_pretrained(build_model(name).eval(), tmp_path)
    input_ids, attention_mask = batch_with_left_padding(seed=8)
    expected = ours(input_ids=input_ids, attention_mask=attention_mask, position_ids=peft_positions()).logits
    assert relative_error(loaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected) < REL_TOLERANCE


def test_saved_classification_adapter_loads_in_peft_with_its_head(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-bert", task="sequence_classification")
    with torch.no_grad():
        ours.base_model.classifier.weight.mul_(3.0)
    ours.save_adapter(tmp_path)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == {
        "prompt_embeddings",
        "base_model.classifier.weight",
        "base_model.classifier.bias",
    }

    loaded = peft.PeftModel.from_pretrained(build_model("tiny-bert", task="sequence_classification").eval(), tmp_path)
    input_ids, attention_mask = batch_with_left_padding(seed=12)
    expected = ours(input_ids=input_ids, attention_mask=attention_mask, position_ids=peft_positions()).logits
    assert relative_error(peft_classification_logits(loaded, input_ids, attention_mask), expected) < REL_TOLERANCE


@pytest.mark.parametrize("projection", [False, True])
def test_peft_saved_adapter_loads_as_the_flat_table(tmp_path: Path, projection: bool) -> None:
    _, theirs = ours_and_peft("tiny-llama", projection)
    theirs.save_pretrained(tmp_path)

    loaded = peftlab.load_adapter(build_model("tiny-llama").eval(), tmp_path)
    assert loaded.method.prefix_encoder.transform is None
    assert loaded.num_trainable_parameters() == 0
    input_ids, attention_mask = batch_with_left_padding(seed=9)
    expected = theirs(input_ids=input_ids, attention_mask=attention_mask).logits
    actual = loaded(input_ids=input_ids, attention_mask=attention_mask, position_ids=peft_positions()).logits
    assert relative_error(actual, expected) < REL_TOLERANCE


def test_loaded_adapter_with_projection_keeps_training_its_flat_table(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-gpt2", projection=True)
    ours.save_adapter(tmp_path)
    loaded = peftlab.load_adapter(build_model("tiny-gpt2").eval(), tmp_path, trainable=True)
    assert [name for name, _ in loaded.named_trainable_parameters()] == ["method.prefix_encoder.embedding.weight"]

    input_ids, attention_mask = batch_with_left_padding(seed=10)
    before = loaded(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    assert relative_error(before, ours(input_ids=input_ids, attention_mask=attention_mask).logits) < REL_TOLERANCE
    optimizer = torch.optim.SGD(loaded.trainable_parameters(), lr=1.0)
    loaded(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
    optimizer.step()
    after = loaded(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
    assert relative_error(after, before) > 1e-4


def test_detach_restores_the_attention_implementation_and_the_base_outputs() -> None:
    model = build_model("tiny-llama").eval()
    input_ids, attention_mask = batch_with_left_padding(seed=11)
    expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    ours = peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=NUM_VIRTUAL_TOKENS))
    assert model.config._attn_implementation == "peftlab_prefix_sdpa"
    assert not torch.allclose(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)

    ours.method.detach_from(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
    assert all(parameter.requires_grad for parameter in model.parameters())


# --- bad input ---------------------------------------------------------------------------------------------


class InlineAttentionConfig(PretrainedConfig):
    """Config of a test model that computes attention itself."""

    model_type = "peftlab-inline-attention-test"


class InlineAttentionModel(PreTrainedModel):
    """A model whose attention never goes through transformers' AttentionInterface."""

    config_class = InlineAttentionConfig

    def __init__(self, config: InlineAttentionConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(16, 8)
        self.qkv = nn.Linear(8, 24)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        query, key, value = self.qkv(self.embed(input_ids)).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(query, key, value, is_causal=True)


# --- init from the model's own activations -----------------------------------------------------------------


@pytest.mark.parametrize("init", ["real_tokens", "text"])
@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_prefix_from_tokens_is_the_base_model_reading_those_tokens_first(name: str, init: str) -> None:
    """A prefix initialised from tokens equals, at step 0, prepending those token ids to the plain base model's input.

    Rotary models (Llama) compute the prefix at negative positions, so real tokens keep positions 0..L-1;
    absolute-position models (GPT-2) compute it at 0..T-1 and real tokens need positions T..T+L-1.
    """
    base = build_model(name).eval()
    torch.manual_seed(7)
    tokenizer = lambda text: {"input_ids": [ord(character) for character in text]}  # noqa: E731
    config = PrefixTuningConfig(
        num_virtual_tokens=NUM_VIRTUAL_TOKENS + 2, prefix_init=init, prefix_init_text="ab", tokenizer=tokenizer
    )
    model = peftlab.apply(copy.deepcopy(base), config)
    prefix_ids = model.method.init_token_ids
    if init == "text":
        assert prefix_ids.tolist() == [97, 98, 97, 98, 97]
    count = prefix_ids.shape[0]
    input_ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(8))
    positions = None if name == "tiny-llama" else torch.arange(count, count + LENGTH).expand(2, -1)
    ours = model(input_ids=input_ids, position_ids=positions).logits
    with torch.no_grad():
        expected = base(input_ids=torch.cat([prefix_ids.expand(2, -1), input_ids], dim=1)).logits[:, count:]
    assert relative_error(ours.detach(), expected) < REL_TOLERANCE
    ours.float().pow(2).mean().backward()
    gradient = model.method.prefix_encoder.embedding.weight.grad
    assert gradient is not None and gradient.abs().sum() > 0


def test_real_token_prefix_depends_on_the_seed_and_is_reproducible() -> None:
    def table(seed: int) -> torch.Tensor:
        base = build_model("tiny-llama")
        torch.manual_seed(seed)
        model = peftlab.apply(base, PrefixTuningConfig(num_virtual_tokens=4, prefix_init="real_tokens"))
        return model.method.prefix_encoder.table().detach().clone()

    assert torch.equal(table(0), table(0))
    assert not torch.equal(table(0), table(1))


def tiny_t5() -> nn.Module:
    return T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (PrefixTuningConfig(num_virtual_tokens=0), ValueError, "num_virtual_tokens"),
        (PrefixTuningConfig(num_virtual_tokens=-1), ValueError, "num_virtual_tokens"),
        (PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=0), ValueError, "encoder_hidden_size"),
        (PrefixTuningConfig(num_virtual_tokens=2, modules_to_save=["head"]), AdapterError, "modules_to_save"),
        (PrefixTuningConfig(num_virtual_tokens=2, prefix_init="words"), ValueError, "prefix_init is 'words'; choose one of"),
        (PrefixTuningConfig(num_virtual_tokens=2, prefix_init="real_tokens", prefix_projection=True), ValueError, "one or the other"),
        (PrefixTuningConfig(num_virtual_tokens=2, prefix_init="text"), ValueError, "prefix_init_text must be a string"),
        (PrefixTuningConfig(num_virtual_tokens=2, prefix_init="text", prefix_init_text="x"), ValueError, "tokenizer is required"),
        (
            PrefixTuningConfig(
                num_virtual_tokens=2, prefix_init="text", prefix_init_text="x", tokenizer=lambda text: {"input_ids": [10**6]}
            ),
            ValueError,
            "beyond the model's",
        ),
    ],
)
def test_bad_config_raises_a_clear_error_and_leaves_the_model_unchanged(
    config: PrefixTuningConfig, error: type[Exception], message: str
) -> None:
    model = build_model("tiny-gpt2")
    with pytest.raises(error, match=message):
        peftlab.apply(model, config)
    assert model.config._attn_implementation == "sdpa"
    assert all(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize(
    ("make_model", "message"),
    [
        (lambda: nn.Sequential(nn.Embedding(8, 4)), "not a transformers PreTrainedModel"),
        (lambda: InlineAttentionModel(InlineAttentionConfig()), "no attention layer .* called transformers' AttentionInterface"),
        (tiny_t5, "encoder-decoder"),
    ],
)
def test_models_whose_attention_cannot_take_a_prefix_are_refused(make_model: object, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        peftlab.apply(make_model(), PrefixTuningConfig(num_virtual_tokens=2))  # type: ignore[operator]


def test_models_that_cannot_switch_attention_or_use_flex_attention_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("tiny-llama")
    model.set_attn_implementation("flex_attention")
    with pytest.raises(AdapterError, match=r"'flex_attention'.*set_attn_implementation\('sdpa'\)"):
        peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=2))
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", classmethod(lambda cls: False))
    with pytest.raises(AdapterError, match="does not route attention through transformers' AttentionInterface"):
        peftlab.apply(build_model("tiny-llama"), PrefixTuningConfig(num_virtual_tokens=2))


def test_applying_twice_and_running_a_copied_model_give_clear_errors() -> None:
    model = build_model("tiny-llama")
    ours = peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(AdapterError, match="already has prefix tuning"):
        peftlab.apply(model, PrefixTuningConfig(num_virtual_tokens=2))
    copied = copy.deepcopy(model)
    with pytest.raises(AdapterError, match="no prefix bound"):
        copied(input_ids=torch.zeros(1, 2, dtype=torch.long))
    assert ours(input_ids=torch.zeros(1, 2, dtype=torch.long)).logits.shape == (1, 2, VOCAB)


def test_adapter_with_wrong_table_shape_is_rejected_and_the_model_restored(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-llama")
    ours.save_adapter(tmp_path)
    fields = json.loads((tmp_path / "adapter_config.json").read_text())
    fields["num_virtual_tokens"] = NUM_VIRTUAL_TOKENS + 2
    (tmp_path / "adapter_config.json").write_text(json.dumps(fields))
    model = build_model("tiny-llama")
    with pytest.raises(AdapterError, match=r"prompt_embeddings.*shape.*num_key_value_heads"):
        peftlab.load_adapter(model, tmp_path)
    assert model.config._attn_implementation == "sdpa"
    assert all(parameter.requires_grad for parameter in model.parameters())
