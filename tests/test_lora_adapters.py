"""LoRA adapter files: the PEFT layout on disk, loading across peftlab and PEFT, and refusing bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from test_lora import (
    TASKS,
    assert_unchanged,
    copy_adapter_into_peft,
    peft_config_like,
    random_batch,
    randomize_adapter,
    relative_error,
    snapshot,
    twin_models,
)

import peftlab
from peftlab import AdapterError, LoRAConfig
from peftlab.adapters import CONFIG_NAME, WEIGHTS_NAME
from peftlab.methods.lora import lora_layers
from peftlab.models import build_model

# PEFT warns that it switches fan_in_fan_out on for GPT-2's Conv1D, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
REL_TOL = 1e-5

CROSS_LOAD_CASES = [
    ("tiny-llama", LoRAConfig(r=4, alpha=16.0, target_modules="all-linear", use_rslora=True)),
    ("tiny-gpt2", LoRAConfig(r=8, alpha=8.0, target_modules=["c_attn", "c_proj"], bias="lora_only")),
    ("tiny-bert", LoRAConfig(r=2, alpha=4.0, task_type="SEQ_CLS", bias="all")),
]
CASE_IDS = ["llama-all-linear-rslora", "gpt2-conv1d-lora-only-bias", "bert-seq-cls-bias-all"]


def save_random_peftlab_adapter(preset: str, config: LoRAConfig, directory: Path, seed: int = 41):
    """Apply ``config`` to a fresh model, give it random adapter values and save it; returns the wrapped model."""
    model = build_model(preset, task=TASKS[preset], seed=0).eval()
    wrapped = peftlab.apply(model, config)
    randomize_adapter(wrapped, seed=seed)
    wrapped.save_adapter(directory)
    return wrapped


# --- the files peftlab writes --------------------------------------------------------------------


def test_saved_files_follow_the_peft_layout(tmp_path: Path) -> None:
    config = LoRAConfig(r=4, alpha=16.0, dropout=0.05, target_modules=["c_attn"], use_rslora=True)
    save_random_peftlab_adapter("tiny-gpt2", config, tmp_path)
    fields = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert fields["peft_type"] == "LORA" and fields["task_type"] == "CAUSAL_LM"
    assert (fields["r"], fields["lora_alpha"], fields["lora_dropout"]) == (4, 16, 0.05)
    assert fields["target_modules"] == ["c_attn"]
    assert fields["use_rslora"] is True and fields["fan_in_fan_out"] is True
    assert fields["bias"] == "none" and fields["modules_to_save"] is None
    assert fields["inference_mode"] is True and fields["init_lora_weights"] is True
    assert fields["use_dora"] is False and fields["lora_bias"] is False
    assert fields["rank_pattern"] == {} and fields["alpha_pattern"] == {} and fields["layers_to_transform"] is None

    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert sorted(tensors) == [
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{part}.weight" for i in (0, 1) for part in "AB"
    ]
    # Conv1D(in=64, out=192): A and B are stored in nn.Linear layout, (r, in) and (out, r)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (192, 4)
    assert all(t.dtype == torch.float32 for t in tensors.values())


# --- peftlab <-> PEFT ------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "config"), CROSS_LOAD_CASES, ids=CASE_IDS)
def test_a_peftlab_adapter_loads_in_peft_with_the_same_logits(preset: str, config: LoRAConfig, tmp_path: Path) -> None:
    ours = save_random_peftlab_adapter(preset, config, tmp_path)
    base = build_model(preset, task=TASKS[preset], seed=0).eval()
    theirs = PeftModel.from_pretrained(base, tmp_path).eval()
    theirs_parameters = dict(theirs.named_parameters())
    for name, layer in lora_layers(ours.base_model).items():
        assert torch.equal(theirs_parameters[f"base_model.model.{name}.lora_B.default.weight"], layer.lora_B)
    batch = random_batch(preset, seed=42)
    assert relative_error(ours(**batch).logits, theirs(**batch).logits) < REL_TOL


@pytest.mark.parametrize(("preset", "config"), CROSS_LOAD_CASES, ids=CASE_IDS)
def test_a_peft_adapter_loads_in_peftlab_with_the_same_logits(preset: str, config: LoRAConfig, tmp_path: Path) -> None:
    # build a PEFT adapter with random values: create it in peftlab, copy the values over, save from PEFT
    source_base, peft_base = twin_models(preset)
    source = peftlab.apply(source_base, config)
    randomize_adapter(source, seed=43)
    theirs = get_peft_model(peft_base, peft_config_like(config)).eval()
    copy_adapter_into_peft(source, theirs)
    theirs.save_pretrained(tmp_path)

    ours = peftlab.load_adapter(build_model(preset, task=TASKS[preset], seed=0).eval(), tmp_path)
    assert ours.peft_config.r == config.r and ours.peft_config.use_rslora == config.use_rslora
    batch = random_batch(preset, seed=44)
    ours_logits = ours(**batch).logits
    assert relative_error(ours_logits, theirs(**batch).logits) < REL_TOL
    assert relative_error(ours_logits, source(**batch).logits) < REL_TOL


@pytest.mark.parametrize("trainable", [True, False])
def test_load_adapter_trainable_flag_controls_the_adapter_parameters(trainable: bool, tmp_path: Path) -> None:
    config = LoRAConfig(r=4, task_type="SEQ_CLS", bias="lora_only")
    save_random_peftlab_adapter("tiny-bert", config, tmp_path)
    model = build_model("tiny-bert", task="sequence_classification", seed=0)
    loaded = peftlab.load_adapter(model, tmp_path, trainable=trainable)
    layers = lora_layers(model)
    assert layers
    for layer in layers.values():
        assert layer.lora_A.requires_grad is trainable and layer.lora_B.requires_grad is trainable
        assert layer.base_layer.bias.requires_grad is trainable
        assert not layer.base_layer.weight.requires_grad
    assert model.classifier.weight.requires_grad is trainable
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert (loaded.num_trainable_parameters() > 0) is trainable


def test_a_peftlab_adapter_round_trips_through_peftlab(tmp_path: Path) -> None:
    config = LoRAConfig(r=3, alpha=5.0, target_modules=r"model\.layers\.1\..*_proj")
    saved = save_random_peftlab_adapter("tiny-llama", config, tmp_path)
    loaded = peftlab.load_adapter(build_model("tiny-llama", seed=0), tmp_path)
    assert loaded.peft_config.target_modules == config.target_modules
    assert list(lora_layers(loaded.base_model)) == list(lora_layers(saved.base_model))
    batch = random_batch("tiny-llama", seed=45)
    assert torch.equal(loaded(**batch).logits, saved(**batch).logits)


# --- bad adapter directories -----------------------------------------------------------------------


@pytest.fixture
def llama_adapter(tmp_path: Path) -> Path:
    """A valid peftlab LoRA adapter (r=8 on q_proj and v_proj) for tiny-llama."""
    directory = tmp_path / "adapter"
    save_random_peftlab_adapter("tiny-llama", LoRAConfig(r=8, target_modules=["q_proj", "v_proj"]), directory)
    return directory


def edit_config(directory: Path, **changes) -> None:
    fields = json.loads((directory / CONFIG_NAME).read_text())
    fields.update(changes)
    (directory / CONFIG_NAME).write_text(json.dumps(fields))


def edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(str(directory / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(directory / WEIGHTS_NAME))


def assert_load_fails_and_leaves_the_model_unchanged(directory: Path, message: str, preset: str = "tiny-llama") -> None:
    model = build_model(preset, task=TASKS[preset], seed=0)
    before = snapshot(model)
    with pytest.raises(AdapterError, match=message):
        peftlab.load_adapter(model, directory)
    assert_unchanged(model, before)


def test_wrong_rank_names_the_file_the_key_and_both_shapes(llama_adapter: Path) -> None:
    edit_config(llama_adapter, r=4)
    assert_load_fails_and_leaves_the_model_unchanged(
        llama_adapter,
        r"adapter_model\.safetensors: tensor 'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' "
        r"has shape \(8, 64\), the model expects \(4, 64\)",
    )


def test_a_target_module_the_model_lacks_names_the_config_file(llama_adapter: Path) -> None:
    edit_config(llama_adapter, target_modules=["q_proj", "query_key_value"])
    assert_load_fails_and_leaves_the_model_unchanged(
        llama_adapter, r"adapter_config\.json: field 'target_modules' entries \['query_key_value'\] match no module"
    )


def test_an_adapter_for_another_architecture_is_refused(llama_adapter: Path) -> None:
    assert_load_fails_and_leaves_the_model_unchanged(
        llama_adapter, r"adapter_config\.json: field 'target_modules' entries \['q_proj', 'v_proj'\]", preset="tiny-gpt2"
    )


def test_missing_and_unknown_tensors_are_named(llama_adapter: Path) -> None:
    missing_key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    edit_tensors(llama_adapter, lambda tensors: tensors.pop(missing_key))
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, rf"tensor '{missing_key}' is missing")

    unknown_key = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    edit_tensors(llama_adapter, lambda tensors: tensors.update({missing_key: torch.zeros(64, 8), unknown_key: torch.zeros(8, 64)}))
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, rf"tensor '{unknown_key}' has no place")


def test_keys_without_the_peft_prefix_are_refused(llama_adapter: Path) -> None:
    edit_tensors(
        llama_adapter,
        lambda tensors: tensors.update({key.removeprefix("base_model.model."): tensors.pop(key) for key in list(tensors)}),
    )
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, r"tensor 'model\.layers\.0\..*' has no place")


def test_a_truncated_weights_file_is_reported(llama_adapter: Path) -> None:
    weights = llama_adapter / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, r"adapter_model\.safetensors: cannot read tensors")


@pytest.mark.parametrize("missing", [CONFIG_NAME, WEIGHTS_NAME])
def test_a_missing_file_is_reported(llama_adapter: Path, missing: str) -> None:
    (llama_adapter / missing).unlink()
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, rf"{missing}: missing")


def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    assert_load_fails_and_leaves_the_model_unchanged(tmp_path / "nowhere", "adapter directory does not exist")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "field 'use_dora' is True; peftlab's LoRA does not support it"),
        ({"lora_bias": True}, "field 'lora_bias'"),
        ({"rank_pattern": {"q_proj": 4}}, "field 'rank_pattern'"),
        ({"alpha_pattern": {"v_proj": 2}}, "field 'alpha_pattern'"),
        ({"layers_to_transform": [0]}, "field 'layers_to_transform'"),
        ({"init_lora_weights": "pissa"}, "field 'init_lora_weights' is 'pissa'"),
        ({"r": "8"}, "field 'r' must be int"),
        ({"r": 0}, "field 'r' .*must be a positive integer"),
        ({"lora_alpha": True}, "field 'lora_alpha' must be a number"),
        ({"bias": "some"}, "field 'bias' must be one of"),
        ({"target_modules": 7}, "field 'target_modules' must be list or str"),
        ({"use_rslora": "yes"}, "field 'use_rslora' must be bool"),
    ],
)
def test_an_unsupported_or_malformed_config_field_names_the_file_and_field(llama_adapter: Path, changes, message) -> None:
    edit_config(llama_adapter, **changes)
    assert_load_fails_and_leaves_the_model_unchanged(llama_adapter, rf"adapter_config\.json: {message}")


def test_a_hand_written_minimal_peft_config_loads(llama_adapter: Path) -> None:
    (llama_adapter / CONFIG_NAME).write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    )
    loaded = peftlab.load_adapter(build_model("tiny-llama", seed=0), llama_adapter)
    assert loaded.peft_config.task_type == "CAUSAL_LM" and len(lora_layers(loaded.base_model)) == 4
