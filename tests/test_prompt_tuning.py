"""Prompt tuning checked against Hugging Face PEFT on identical weights (forward, gradients, generate, files)."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import peftlab
from peftlab import AdapterError, PromptTuningConfig
from peftlab.models import build_model

NUM_VIRTUAL_TOKENS = 3
LENGTH = 6
VOCAB = 512
REL_TOLERANCE = 1e-5
CAUSAL_MODELS = ["tiny-llama", "tiny-gpt2"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def batch_with_left_padding(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids for two rows; the second row is left-padded by two positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (2, LENGTH), generator=generator)
    attention_mask = torch.ones(2, LENGTH, dtype=torch.long)
    attention_mask[1, :2] = 0
    return input_ids, attention_mask


def ours_and_peft(name: str, task: str = "causal_lm", **config: object) -> tuple[peftlab.PeftLabModel, peft.PeftModel]:
    """Our prompt tuning and PEFT's on two copies of one model, sharing a fresh random prompt."""
    peft_task = "CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS"
    ours = peftlab.apply(
        build_model(name, task=task).eval(),
        PromptTuningConfig(num_virtual_tokens=NUM_VIRTUAL_TOKENS, task_type=peft_task, **config),
    )
    theirs = peft.get_peft_model(
        build_model(name, task=task).eval(),
        peft.PromptTuningConfig(task_type=peft_task, num_virtual_tokens=NUM_VIRTUAL_TOKENS),
    )
    prompt = torch.randn(NUM_VIRTUAL_TOKENS, ours.method.prompt_embeddings.shape[1])
    with torch.no_grad():
        ours.method.prompt_embeddings.copy_(prompt)
        theirs.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return ours, theirs


def word_level_tokenizer(directory: str) -> str:
    """Save a small word-level tokenizer (it prepends <s>) to ``directory`` and return the path."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    vocab = {"[UNK]": 0, "<s>": 1, **{word: index + 2 for index, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>").save_pretrained(directory)
    return directory


# --- forward and gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_causal_lm_logits_loss_and_prompt_gradient_match_peft(name: str) -> None:
    ours, theirs = ours_and_peft(name)
    input_ids, attention_mask = batch_with_left_padding(seed=1)
    labels = input_ids.masked_fill(attention_mask == 0, -100)

    out = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    ref = theirs(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    ref.loss.backward()

    assert out.logits.shape == (2, NUM_VIRTUAL_TOKENS + LENGTH, VOCAB)  # T + L positions, as in PEFT
    assert relative_error(out.logits, ref.logits) < REL_TOLERANCE
    assert relative_error(out.loss, ref.loss) < REL_TOLERANCE
    ours_grad = ours.method.prompt_embeddings.grad
    assert ours_grad is not None and ours_grad.abs().sum() > 0
    assert relative_error(ours_grad, theirs.prompt_encoder["default"].embedding.weight.grad) < REL_TOLERANCE


def test_forward_equals_base_model_on_prepended_embeddings_in_float64() -> None:
    model = build_model("tiny-llama", dtype=torch.float64).eval()
    reference = build_model("tiny-llama", dtype=torch.float64).eval()
    ours = peftlab.apply(model, PromptTuningConfig(num_virtual_tokens=NUM_VIRTUAL_TOKENS)).double()
    input_ids, attention_mask = batch_with_left_padding(seed=2)

    prompt = ours.method.prompt_embeddings.detach()
    embeds = torch.cat([prompt.expand(2, -1, -1), reference.get_input_embeddings()(input_ids)], dim=1)
    mask = torch.cat([torch.ones(2, NUM_VIRTUAL_TOKENS, dtype=torch.long), attention_mask], dim=1)
    labels = torch.cat([torch.full((2, NUM_VIRTUAL_TOKENS), -100), input_ids], dim=1)
    expected = reference(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    out = ours(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)

    assert relative_error(out.logits, expected.logits) < 1e-12
    assert relative_error(out.loss, expected.loss) < 1e-12


def test_only_the_prompt_trains_and_the_base_is_frozen() -> None:
    ours = peftlab.apply(build_model("tiny-gpt2"), PromptTuningConfig(num_virtual_tokens=NUM_VIRTUAL_TOKENS))
    assert [name for name, _ in ours.named_trainable_parameters()] == ["method.prompt_embeddings"]
    assert ours.method.prompt_embeddings.dtype == torch.float32
    input_ids, attention_mask = batch_with_left_padding(seed=3)
    ours(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
    assert all(p.grad is None for p in ours.base_model.parameters())


# --- init --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["random", "sample_vocab"])
def test_random_and_sample_vocab_init_match_peft_under_the_same_seed(init: str) -> None:
    torch.manual_seed(7)
    ours = peftlab.apply(build_model("tiny-llama"), PromptTuningConfig(num_virtual_tokens=5, prompt_tuning_init=init))
    torch.manual_seed(7)
    theirs = peft.get_peft_model(
        build_model("tiny-llama"),
        peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init=init.upper()),
    )
    assert torch.equal(ours.method.prompt_embeddings.data, theirs.prompt_encoder["default"].embedding.weight.data)
    if init == "sample_vocab":  # every row is a row of the input embedding matrix
        vocabulary = ours.base_model.get_input_embeddings().weight
        assert all((vocabulary == row).all(dim=1).any() for row in ours.method.prompt_embeddings)


@pytest.mark.parametrize("text", ["the quick brown fox jumps over the lazy dog", "lazy dog"])
def test_text_init_truncates_or_repeats_like_peft(tmp_path: Path, text: str) -> None:
    tokenizer_path = word_level_tokenizer(str(tmp_path))
    config = PromptTuningConfig(
        num_virtual_tokens=5, prompt_tuning_init="text", prompt_tuning_init_text=text, tokenizer=tokenizer_path
    )
    ours = peftlab.apply(build_model("tiny-llama"), config)
    theirs = peft.get_peft_model(
        build_model("tiny-llama"),
        peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=5,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=tokenizer_path,
        ),
    )
    assert torch.equal(ours.method.prompt_embeddings.data, theirs.prompt_encoder["default"].embedding.weight.data)
    # "lazy dog" is <s> lazy dog -> repeated to <s> lazy dog <s> lazy
    table = ours.base_model.get_input_embeddings().weight
    if text == "lazy dog":
        assert torch.equal(ours.method.prompt_embeddings.data, table[[1, 8, 9, 1, 8]])


def test_text_init_accepts_a_tokenizer_object() -> None:
    def tokenizer(text: str) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}

    config = PromptTuningConfig(
        num_virtual_tokens=4, prompt_tuning_init="text", prompt_tuning_init_text="ab abc", tokenizer=tokenizer
    )
    ours = peftlab.apply(build_model("tiny-gpt2"), config)
    assert torch.equal(ours.method.prompt_embeddings.data, ours.base_model.get_input_embeddings().weight[[2, 3, 2, 3]])


# --- generate ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_generate_with_cache_matches_no_cache_and_peft_with_left_padding(name: str) -> None:
    ours, theirs = ours_and_peft(name)
    input_ids, attention_mask = batch_with_left_padding(seed=4)
    settings = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)

    cached = ours.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    uncached = ours.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **settings)
    # peft without a cache: the prompt goes in front of the whole sequence at every step. (peft 0.21.2's cached
    # path finds the cache under its pre-5.24 name, past_key_values, so on transformers 5.24 it re-injects the
    # prompt at every step; the uncached path does not depend on that name.)
    reference = theirs.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **settings)

    assert cached.sequences.shape == (2, LENGTH + 5)  # real tokens only: no virtual positions
    assert torch.equal(cached.sequences[:, :LENGTH], input_ids)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.sequences, reference.sequences)
    for step_cached, step_uncached, step_reference in zip(cached.scores, uncached.scores, reference.scores, strict=True):
        assert relative_error(step_cached, step_uncached) < REL_TOLERANCE
        assert relative_error(step_cached, step_reference) < REL_TOLERANCE
    # The prompt takes part: the first step's scores differ from the base model's.
    base_scores = ours.base_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]
    assert relative_error(cached.scores[0], base_scores) > 1e-3
    # generate() leaves the model's own prepare_inputs_for_generation in place.
    assert "prepare_inputs_for_generation" not in vars(ours.base_model)


# --- sequence classification -------------------------------------------------------------------------------


def test_bert_classification_matches_peft_and_trains_prompt_and_head() -> None:
    ours, theirs = ours_and_peft("tiny-bert", task="sequence_classification", modules_to_save=["classifier"])
    input_ids, attention_mask = batch_with_left_padding(seed=5)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 3:] = 1
    labels = torch.tensor([0, 1])

    out = ours(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    ref = theirs(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
    out.loss.backward()
    ref.loss.backward()

    assert out.logits.shape == (2, 2)
    assert relative_error(out.logits, ref.logits) < REL_TOLERANCE
    trained = {name for name, _ in ours.named_trainable_parameters()}
    assert trained == {"method.prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"}
    peft_head = theirs.base_model.classifier.modules_to_save["default"]
    assert relative_error(ours.base_model.classifier.weight.grad, peft_head.weight.grad) < REL_TOLERANCE
    peft_prompt_grad = theirs.prompt_encoder["default"].embedding.weight.grad
    assert relative_error(ours.method.prompt_embeddings.grad, peft_prompt_grad) < REL_TOLERANCE
    assert ours.base_model.bert.embeddings.word_embeddings.weight.grad is None


def test_classification_defaults_modules_to_save_to_the_head() -> None:
    ours = peftlab.apply(
        build_model("tiny-bert", task="sequence_classification"),
        PromptTuningConfig(num_virtual_tokens=2, task_type="SEQ_CLS"),
    )
    assert ours.base_model.classifier.weight.requires_grad
    assert ours.method.adapter_config(ours.base_model)["modules_to_save"] == ["classifier"]


# --- adapter files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_saved_adapter_has_peft_layout_and_loads_in_peft(tmp_path: Path, name: str) -> None:
    ours, _ = ours_and_peft(name)
    ours.save_adapter(tmp_path)

    tensors = load_file(f"{tmp_path}/adapter_model.safetensors")
    assert set(tensors) == {"prompt_embeddings"}
    assert torch.equal(tensors["prompt_embeddings"], ours.method.prompt_embeddings.detach())
    fields = json.loads((tmp_path / "adapter_config.json").read_text())
    assert fields["peft_type"] == "PROMPT_TUNING" and fields["task_type"] == "CAUSAL_LM"
    assert (fields["num_virtual_tokens"], fields["token_dim"], fields["num_layers"]) == (NUM_VIRTUAL_TOKENS, 64, 2)
    assert fields["num_transformer_submodules"] == 1 and fields["num_attention_heads"] == 4

    loaded = peft.PeftModel.from_pretrained(build_model(name).eval(), tmp_path)
    input_ids, attention_mask = batch_with_left_padding(seed=6)
    expected = ours(input_ids=input_ids, attention_mask=attention_mask).logits
    assert relative_error(loaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected) < REL_TOLERANCE


def test_peft_saved_classification_adapter_loads_with_its_head(tmp_path: Path) -> None:
    _, theirs = ours_and_peft("tiny-bert", task="sequence_classification")
    with torch.no_grad():
        theirs.base_model.classifier.modules_to_save["default"].weight.mul_(3.0)
    theirs.save_pretrained(tmp_path)

    loaded = peftlab.load_adapter(build_model("tiny-bert", task="sequence_classification").eval(), tmp_path)
    input_ids, attention_mask = batch_with_left_padding(seed=7)
    expected = theirs(input_ids=input_ids, attention_mask=attention_mask).logits
    assert relative_error(loaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected) < REL_TOLERANCE
    assert loaded.num_trainable_parameters() == 0


def test_loaded_prompt_can_keep_training(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-llama")
    ours.save_adapter(tmp_path)
    loaded = peftlab.load_adapter(build_model("tiny-llama").eval(), tmp_path, trainable=True)
    assert [name for name, _ in loaded.named_trainable_parameters()] == ["method.prompt_embeddings"]
    before = loaded.method.prompt_embeddings.detach().clone()
    optimizer = torch.optim.SGD(loaded.trainable_parameters(), lr=0.1)
    input_ids, attention_mask = batch_with_left_padding(seed=8)
    loaded(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
    optimizer.step()
    assert not torch.equal(before, loaded.method.prompt_embeddings.detach())


def test_text_init_config_records_the_tokenizer_and_loads_in_peft(tmp_path: Path) -> None:
    tokenizer_path = word_level_tokenizer(str(tmp_path / "tokenizer"))
    config = PromptTuningConfig(
        num_virtual_tokens=3, prompt_tuning_init="text", prompt_tuning_init_text="quick fox", tokenizer=tokenizer_path
    )
    ours = peftlab.apply(build_model("tiny-gpt2").eval(), config)
    ours.save_adapter(tmp_path / "adapter")
    fields = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (fields["prompt_tuning_init"], fields["tokenizer_name_or_path"]) == ("TEXT", tokenizer_path)
    loaded = peft.PeftModel.from_pretrained(build_model("tiny-gpt2").eval(), tmp_path / "adapter")
    assert torch.equal(loaded.prompt_encoder["default"].embedding.weight, ours.method.prompt_embeddings.detach())


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PromptTuningConfig(num_virtual_tokens=0), "num_virtual_tokens"),
        (PromptTuningConfig(num_virtual_tokens=-2), "num_virtual_tokens"),
        (PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="vocab"), "prompt_tuning_init"),
        (PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="text", tokenizer=str), "prompt_tuning_init_text"),
        (PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="text", prompt_tuning_init_text="a"), "tokenizer"),
        (
            PromptTuningConfig(
                num_virtual_tokens=3,
                prompt_tuning_init="text",
                prompt_tuning_init_text="   ",
                tokenizer=lambda text: {"input_ids": []},
            ),
            "tokenises to no tokens",
        ),
        (PromptTuningConfig(num_virtual_tokens=3, modules_to_save=["head"]), "modules_to_save"),
        (PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM"), "task_type"),
    ],
)
def test_bad_config_raises_a_clear_error_and_leaves_the_model_unchanged(config: PromptTuningConfig, message: str) -> None:
    model = build_model("tiny-llama")
    with pytest.raises(ValueError, match=message):
        peftlab.apply(model, config)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_adapter_with_wrong_prompt_shape_is_rejected_and_the_model_restored(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-llama")
    ours.save_adapter(tmp_path)
    fields = json.loads((tmp_path / "adapter_config.json").read_text())
    fields["num_virtual_tokens"] = NUM_VIRTUAL_TOKENS + 1
    (tmp_path / "adapter_config.json").write_text(json.dumps(fields))
    model = build_model("tiny-llama")
    with pytest.raises(AdapterError, match=r"prompt_embeddings.*shape"):
        peftlab.load_adapter(model, tmp_path)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_adapter_for_two_transformer_stacks_is_rejected(tmp_path: Path) -> None:
    ours, _ = ours_and_peft("tiny-llama")
    ours.save_adapter(tmp_path)
    fields = json.loads((tmp_path / "adapter_config.json").read_text())
    fields["num_transformer_submodules"] = 2
    (tmp_path / "adapter_config.json").write_text(json.dumps(fields))
    with pytest.raises(AdapterError, match=r"adapter_config\.json.*num_transformer_submodules"):
        peftlab.load_adapter(build_model("tiny-llama"), tmp_path)


@pytest.mark.parametrize("cache_argument", ["cache", "past_key_values"])  # the names after and before transformers 5.24
def test_forward_rejects_a_cache_and_generate_rejects_inputs_embeds(cache_argument: str) -> None:
    ours, _ = ours_and_peft("tiny-llama")
    input_ids, _ = batch_with_left_padding(seed=9)
    cache = ours.base_model(input_ids=input_ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="generate"):
        ours(input_ids=input_ids, **{cache_argument: cache})
    with pytest.raises(ValueError, match="input_ids"):
        ours.generate(inputs_embeds=torch.zeros(2, LENGTH, 64), max_new_tokens=1)
