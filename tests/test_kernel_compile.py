"""The fused kernels compile for Hopper (sm_90) on a machine without a GPU: no GPU-only compile errors,
tensor-core instructions present, and the first autotune config of every kernel fits shared memory."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

VARIANTS = ["bf16 r16 dropout", "bf16 q/k/v r24 dropout"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_kernels_compile_for_sm90_with_tensor_cores(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "peftlab.kernels.compile_check", "--arch", "90", "--first-config-only"]
    for variant in VARIANTS:
        command += ["--variant", variant]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "_kernel" in line]
    kernels_seen = {next(word for word in line.split() if word.endswith("_kernel")) for line in lines}
    assert kernels_seen == {"_lora_shrink_kernel", "_lora_forward_kernel", "_lora_backward_kernel"}
    for line in lines:
        assert "(too big)" not in line, line
        assert "tensor-core=0" not in line, line
