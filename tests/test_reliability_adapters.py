"""Untrusted adapter folders: tensors only ever come from safetensors, and a malicious config (absurd sizes,
path-like names, a regex that backtracks forever, a pickle instead of safetensors) is refused with one
line naming the file and the field, before any method is attached to the model (so nothing is allocated
and the model is left as it was)."""

from __future__ import annotations

import ast
import builtins
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import peftlab
from peftlab import AdapterError, LoRAConfig, PrefixTuningConfig, PromptTuningConfig
from peftlab.methods import METHODS
from peftlab.models import build_model
from peftlab.safety import has_nested_quantifier

PACKAGE_DIRS = [Path(peftlab.__file__).parent, Path(peftlab.__file__).parent.parent / "kernels"]


def saved_adapter(tmp_path: Path, config: Any) -> Path:
    directory = tmp_path / "adapter"
    peftlab.apply(build_model("tiny-llama"), config).save_adapter(directory)
    return directory


def edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "adapter_config.json"
    fields = json.loads(path.read_text())
    fields.update(changes)
    path.write_text(json.dumps(fields))


def _forbidden_attach(self: Any, model: Any) -> None:
    raise AssertionError(f"{type(self).__name__}.attach ran although the adapter folder should be refused")


def refused(directory: Path, *fragments: str, file_name: str = "adapter_config.json") -> AdapterError:
    """Load ``directory`` onto a fresh model; it must fail with one line naming the file and each fragment,
    before any method is attached (a method that starts attaching fails the test: it could allocate)."""
    model = build_model("tiny-llama")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.MonkeyPatch.context() as patch, pytest.raises(AdapterError) as caught:
        for method in METHODS:
            patch.setattr(method, "attach", _forbidden_attach)
        peftlab.load_adapter(model, directory)
    message = str(caught.value)
    assert message.startswith(str(directory / file_name)), message
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    return caught.value


SIZE_CASES: list[tuple[str, Callable[[], Any], dict[str, Any], str]] = [
    ("lora rank", lambda: LoRAConfig(r=4), {"r": 10**9}, "field 'r' is 1000000000; it must be a positive integer no larger than 65,536"),
    ("negative rank", lambda: LoRAConfig(r=4), {"r": -4}, "field 'r' is -4; it must be a positive integer"),
    ("rank as text", lambda: LoRAConfig(r=4), {"r": "4"}, "field 'r' must be int, got '4'"),
    ("prompt length", lambda: PromptTuningConfig(num_virtual_tokens=4), {"num_virtual_tokens": 10**12},
     "field 'num_virtual_tokens' is 1000000000000"),
    ("prefix encoder width", lambda: PrefixTuningConfig(num_virtual_tokens=4),
     {"prefix_projection": True, "encoder_hidden_size": 2**40}, "field 'encoder_hidden_size' is 1099511627776"),
]


@pytest.mark.parametrize(("make", "changes", "fragment"), [c[1:] for c in SIZE_CASES], ids=[c[0] for c in SIZE_CASES])
def test_absurd_sizes_are_refused_before_anything_is_allocated(
    tmp_path: Path, make: Callable[[], Any], changes: dict[str, Any], fragment: str
) -> None:
    directory = saved_adapter(tmp_path, make())
    edit_config(directory, **changes)
    refused(directory, fragment)


def test_a_rank_that_does_not_match_the_saved_tensors_is_refused(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path, LoRAConfig(r=4))
    edit_config(directory, r=64)
    refused(directory, "field 'r' is 64 but tensor", "has rank 4")


def test_a_prompt_length_that_does_not_match_the_saved_tensors_is_refused(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path, PromptTuningConfig(num_virtual_tokens=4))
    edit_config(directory, num_virtual_tokens=4000)
    refused(directory, "field 'num_virtual_tokens' is 4000 but tensor 'prompt_embeddings' has shape (4, 64)")


@pytest.mark.parametrize(
    ("field_name", "value", "fragment"),
    [
        ("target_modules", ["q_proj", "../../../etc/passwd"], "'../../../etc/passwd', which is not a module name"),
        ("target_modules", ["/abs/q_proj"], "not a module name"),
        ("modules_to_save", ["lm_head", "..\\..\\x"], "not a module name"),
        ("target_modules", "(.*)*_proj", "exponential time"),
        ("target_modules", "(q|k)_proj" * 200, "-character regex; the limit is 1000"),
    ],
    ids=["traversal", "absolute path", "windows traversal", "nested quantifier", "long regex"],
)
def test_path_like_names_and_dangerous_regexes_are_refused(
    tmp_path: Path, field_name: str, value: Any, fragment: str
) -> None:
    directory = saved_adapter(tmp_path, LoRAConfig(r=4))
    edit_config(directory, **{field_name: value})
    refused(directory, f"field '{field_name}'", fragment)


@pytest.mark.parametrize(
    ("pattern", "dangerous"),
    [
        (r"(a+)+$", True),
        (r"((a+))+", True),  # nested groups
        (r"(?:\w*x)*", True),  # non-capturing
        (r"(\d+\.){2,}", True),  # counted repetition of a repeating group
        (r".*\.(q_proj|v_proj)$", False),  # the regexes PEFT configs use
        (r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", False),
        (r"(.*\.)?q_proj", False),  # optional, not repeated
        (r"[(+]+(a)+", False),  # quantifier characters inside a class are literals
        (r"\(a+\)+", False),  # escaped parentheses are not a group
    ],
)
def test_nested_quantifiers_are_told_apart_from_ordinary_module_regexes(pattern: str, dangerous: bool) -> None:
    assert has_nested_quantifier(pattern) is dangerous


def test_oversized_and_too_deeply_nested_configs_are_refused(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path, LoRAConfig(r=4))
    config = directory / "adapter_config.json"
    original = json.loads(config.read_text())
    config.write_text(json.dumps({**original, "padding": "x" * (2 << 20)}))
    refused(directory, "over the 1,048,576-byte limit")
    config.write_text('{"peft_type": "LORA", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(directory, "nested too deeply")


def test_a_pickled_adapter_is_never_unpickled(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path, LoRAConfig(r=4))
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return builtins.exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    (directory / "adapter_model.safetensors").unlink()
    torch.save({"base_model.model.x": Payload()}, directory / "adapter_model.bin")
    error = refused(directory, "adapter_model.bin is a pickle file", file_name="adapter_model.safetensors")
    assert "can run arbitrary code" in str(error)
    assert not marker.exists()


def test_a_safetensors_header_declaring_absurd_shapes_is_refused(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path, LoRAConfig(r=4))
    header = json.dumps({"lora_A": {"dtype": "F32", "shape": [10**12, 10**6], "data_offsets": [0, 16]}}).encode()
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    refused(directory, "cannot read tensors", file_name="adapter_model.safetensors")


def test_a_full_checkpoint_index_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    directory = tmp_path / "full"
    peftlab.apply(build_model("tiny-llama"), peftlab.FullFinetuneConfig()).save_adapter(directory)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file({"secret": torch.zeros(1)}, str(outside / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "../elsewhere/model.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(directory, "field 'weight_map' names '../elsewhere/model.safetensors'; it must be a plain file name",
            file_name="model.safetensors.index.json")


# --- no code path unpickles --------------------------------------------------------------------------


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def test_the_package_never_unpickles_or_runs_remote_code() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; no ``pickle``/``dill`` loads, no ``trust_remote_code=True``."""
    sources = sorted(path for directory in PACKAGE_DIRS for path in directory.rglob("*.py"))
    assert len(sources) > 20
    offences = []
    for path in sources:
        for name, call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            keywords = {k.arg: k.value for k in call.keywords}
            where = f"{path}:{call.lineno}: {name}"
            if name.endswith("torch.load"):
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    offences.append(f"{where} without weights_only=True")
            if name.split(".")[-1] in ("loads", "load", "Unpickler") and name.split(".")[0] in ("pickle", "dill", "cloudpickle"):
                offences.append(where)
            trust = keywords.get("trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                offences.append(f"{where} with trust_remote_code")
    assert offences == []
