"""The README's API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    model, tuned, ids = namespace["model"], namespace["tuned"], namespace["ids"]
    graded = [name for name, p in model.named_parameters() if p.grad is not None]
    assert graded and all("lora_A" in name or "lora_B" in name for name in graded)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    assert tuned.num_trainable_parameters() == 0  # loaded for inference by default
    saved = {name for name, _ in tuned.named_parameters() if "lora_" in name}
    assert saved == {name for name, _ in model.named_parameters() if "lora_" in name}
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=ids).logits, model(input_ids=ids).logits)
