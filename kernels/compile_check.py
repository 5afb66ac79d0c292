"""Compile the LoRA kernels for an NVIDIA GPU on a machine without one (Triton ships ``ptxas``).

    python -m peftlab.kernels.compile_check                 # sm_90 (H100/H200), every autotune config
    python -m peftlab.kernels.compile_check --arch 80 --first-config-only

For each kernel, problem variant and autotune config it prints the shared memory the kernel needs,
whether that fits the target, the register spill stores and the tensor-core instructions in the
machine code, so a change can be checked for GPU-only compile errors, spills and shared-memory
overflow before a GPU is at hand (the CPU interpreter catches none of these). It is a development
tool built on Triton internals (a stand-in driver and ``JITFunction.run(warmup=True)``); run it in a
process of its own, without ``TRITON_INTERPRET``. Exit status 1 when a variant has no config that fits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Shared memory one block may use (bytes): Hopper 227 KiB, Ampere A100 163 KiB.
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}


@dataclass(frozen=True)
class Variant:
    """One problem the kernels are compiled for (shapes only matter through specialisation)."""

    name: str
    dtype: torch.dtype
    layers: int
    rank: int
    dropout_p: float
    compute_dx: bool = True


VARIANTS = (
    Variant("bf16 r16", torch.bfloat16, 1, 16, 0.0),
    Variant("bf16 r16 dropout", torch.bfloat16, 1, 16, 0.1),
    Variant("bf16 r16 dropout no-dX", torch.bfloat16, 1, 16, 0.1, compute_dx=False),
    Variant("bf16 r64", torch.bfloat16, 1, 64, 0.0),
    Variant("bf16 q/k/v r24 dropout", torch.bfloat16, 3, 24, 0.1),
    Variant("fp16 gate/up r8", torch.float16, 2, 8, 0.0),
    Variant("fp32 r16 dropout", torch.float32, 1, 16, 0.1),
)


@dataclass
class Compiled:
    """What one compiled config needs and contains."""

    variant: str
    kernel: str
    config: str
    shared_bytes: int
    fits: bool
    spill_stores: int
    tensor_core_ops: int


class _StandInDriver:
    """Just enough of a CUDA driver for Triton to compile (never to launch)."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> object:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _machine_code_counts(cubin: bytes) -> tuple[int, int]:
    """(spill stores, tensor-core instructions) in a cubin, read with Triton's bundled ``cuobjdump``."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run(
            [str(tool), "-sass", str(path)], capture_output=True, text=True, check=True
        ).stdout
    tensor_core = sum(sass.count(op) for op in ("HGMMA", "HMMA"))
    return sass.count("STL"), tensor_core


@contextlib.contextmanager
def _compile_instead_of_launch(
    arch: int, first_only: bool, sink: list[Compiled], variant: str
) -> Iterator[None]:
    """Make every autotuned launch compile its configs (warm-up only) and record what came out."""
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner

    original_run = Autotuner.run
    limit = SHARED_MEMORY_LIMIT.get(arch, SHARED_MEMORY_LIMIT[80])

    def compile_configs(self: Autotuner, *args: object, **kwargs: object) -> None:
        kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        configs = self.prune_configs(kwargs)  # the candidates autotuning would time for this problem
        for config in configs[:1] if first_only else configs:
            kernel = self.fn.run(*args, grid=(1,), warmup=True, **kwargs, **config.all_kwargs())
            shared = kernel.metadata.shared
            spills, tensor_core = _machine_code_counts(kernel.asm["cubin"])
            label = f"{config.kwargs} stages={config.num_stages} warps={config.num_warps}"
            sink.append(
                Compiled(variant, self.fn.__name__, label, shared, shared <= limit, spills, tensor_core)
            )

    previous_driver = getattr(driver, "_active", None)  # may be unset: there is no GPU driver here
    driver.set_active(_StandInDriver(arch))
    Autotuner.run = compile_configs
    try:
        yield
    finally:
        Autotuner.run = original_run
        driver._active = previous_driver


def compile_variant(variant: Variant, arch: int, first_only: bool) -> list[Compiled]:
    """Compile forward (and, with dropout, the shrink kernel) and backward for ``variant``."""
    from .lora_backward import lora_backward
    from .lora_forward import lora_forward
    from .triton_support import padded_rank

    rows, features = 256, 256
    outputs = [256, 128, 128, 128][: variant.layers]
    x = torch.zeros(rows, features, dtype=variant.dtype)
    weights = [torch.zeros(n, features, dtype=variant.dtype) for n in outputs]
    lora_As = [torch.zeros(variant.rank, features) for _ in outputs]
    lora_Bs = [torch.zeros(n, variant.rank) for n in outputs]
    scalings, seeds = [1.0] * variant.layers, [1] * variant.layers
    s_cat = torch.zeros(rows, variant.layers * padded_rank(variant.rank))
    grads = [torch.zeros(rows, n, dtype=variant.dtype) for n in outputs]
    compiled: list[Compiled] = []
    with _compile_instead_of_launch(arch, first_only, compiled, variant.name):
        lora_forward(
            x, weights, [None] * variant.layers, lora_As, lora_Bs, scalings, variant.dropout_p, seeds
        )
        lora_backward(
            grads, x, weights, lora_As, lora_Bs, s_cat, scalings, variant.dropout_p, seeds, variant.compute_dx
        )
    return compiled


def main(argv: list[str] | None = None) -> int:
    """Compile every variant and print one line per kernel config; 1 if a variant has nothing that fits."""
    parser = argparse.ArgumentParser(description="Compile the LoRA kernels for a GPU target, without a GPU.")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper, 80: A100)")
    parser.add_argument("--first-config-only", action="store_true", help="one autotune config per kernel")
    parser.add_argument(
        "--variant", action="append", choices=[v.name for v in VARIANTS], help="only these problem variants"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the check compiles real GPU code", file=sys.stderr)
        return 2
    failed = False
    for variant in VARIANTS:
        if args.variant and variant.name not in args.variant:
            continue
        compiled = compile_variant(variant, args.arch, args.first_config_only)
        for c in compiled:
            print(
                f"{c.variant:24} {c.kernel:22} {c.config:75} smem={c.shared_bytes:6d}"
                f"{'' if c.fits else ' (too big)'} spills={c.spill_stores} tensor-core={c.tensor_core_ops}"
            )
        for kernel in sorted({c.kernel for c in compiled}):
            if not any(c.fits for c in compiled if c.kernel == kernel):
                print(
                    f"{variant.name}: no {kernel} config fits sm_{args.arch} shared memory", file=sys.stderr
                )
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
