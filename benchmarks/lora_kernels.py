"""Forward+backward time of one LoRA linear: fused Triton kernels vs the frozen base, the torch reference, PEFT.

For every shape, rank and dropout it times (median of many CUDA-event-timed iterations, after warm-up,
inputs and weights rotated through more copies than fit in L2):

* ``base``   the frozen base linear alone (forward GEMM + grad-input GEMM): the floor;
* ``torch``  ``peftlab.kernels`` reference (``kernel="torch"``);
* ``peft``   Hugging Face PEFT's LoRA ``Linear`` (when ``peft`` is installed);
* ``triton`` our fused kernels (``kernel="triton"``; CUDA only).

All run as in bf16 mixed-precision training: bf16 base weights and activations, fp32 adapter weights,
under ``torch.autocast``. It prints a table (ms, TFLOP/s, ours/base, peft/ours), checks the fused
kernels against a float64 reference, and writes ``lora_kernels_<device>.csv`` and ``.md`` (device,
command, versions) under ``--out``. Without CUDA only ``--quick`` runs (tiny shapes on the CPU, no
Triton rows): a smoke test, never GPU numbers.

    python benchmarks/lora_kernels.py                 # Llama-3-8B projections, M=8192, r=8/16/64, p=0/0.1
    python benchmarks/lora_kernels.py --ranks 16      # just the rank the targets are stated for
    python benchmarks/lora_kernels.py --quick --out /tmp/lora-bench
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import math
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peftlab.kernels as kernels
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from peftlab.provenance import revision_text

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
PROVIDERS = ("base", "torch", "peft", "triton")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Targets at r=16, geometric mean over shapes (the fused-kernel issue's acceptance numbers).
TARGET_RANK = 16
TARGETS = {"ours/base p=0": 1.10, "ours/base p>0": 1.15, "peft/ours": 1.35}
# Rotate through enough input sets that each iteration's operands are evicted from L2 (H100: 50 MB).
L2_EVICTION_FACTOR = 3
MIN_INPUT_SETS, MAX_INPUT_SETS = 3, 64


@dataclass(frozen=True)
class Shape:
    """One projection: ``tokens`` x ``in_features`` input, ``out_features`` outputs."""

    name: str
    tokens: int
    in_features: int
    out_features: int


LLAMA3_8B_TOKENS = 8192
LLAMA3_8B_SHAPES = (
    Shape("q/o 4096->4096", LLAMA3_8B_TOKENS, 4096, 4096),
    Shape("k/v 4096->1024", LLAMA3_8B_TOKENS, 4096, 1024),
    Shape("gate/up 4096->14336", LLAMA3_8B_TOKENS, 4096, 14336),
    Shape("down 14336->4096", LLAMA3_8B_TOKENS, 14336, 4096),
)
QUICK_SHAPES = (Shape("tiny 64->64", 64, 64, 64), Shape("tiny 64->32", 64, 64, 32))


@dataclass
class InputSet:
    """One copy of every operand; the benchmark cycles through several so L2 holds none of them."""

    x: torch.Tensor
    grad_y: torch.Tensor
    weight: torch.Tensor
    lora_A: torch.nn.Parameter
    lora_B: torch.nn.Parameter
    peft_layer: torch.nn.Module | None = None


@dataclass
class Result:
    """One provider's timing for one (shape, rank, dropout)."""

    shape: Shape
    rank: int
    dropout: float
    provider: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    tflops: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (CPU smoke run)")
    parser.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="IN:OUT",
        help="custom projection(s) instead of Llama-3-8B",
    )
    parser.add_argument(
        "--tokens", type=int, default=None, help=f"M, tokens per step (default {LLAMA3_8B_TOKENS})"
    )
    parser.add_argument("--ranks", default=None, help="comma-separated LoRA ranks (default 8,16,64)")
    parser.add_argument("--dropouts", default="0,0.1", help="comma-separated dropout probabilities")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="activation/base-weight dtype")
    parser.add_argument("--adapter-dtype", choices=DTYPES, default="float32", help="LoRA A/B dtype")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="subset of " + ",".join(PROVIDERS))
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 10; quick 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 50; quick 3)")
    parser.add_argument(
        "--no-numerics", action="store_true", help="skip the float64 check of the fused kernels"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for the CSV and markdown results"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace result files of the same device")
    args = parser.parse_args(argv)
    unknown = set(args.providers.split(",")) - set(PROVIDERS)
    if unknown:
        parser.error(f"--providers: unknown {sorted(unknown)}; choose from {', '.join(PROVIDERS)}")
    return args


def selected_shapes(args: argparse.Namespace) -> list[Shape]:
    """The projections to run: ``--shape IN:OUT`` entries, the quick shapes, or Llama-3-8B's."""
    if args.shape:
        tokens = args.tokens or (64 if args.quick else LLAMA3_8B_TOKENS)
        shapes = []
        for spec in args.shape:
            match = re.fullmatch(r"(\d+):(\d+)", spec)
            if match is None:
                raise SystemExit(f"--shape {spec!r}: expected IN:OUT, for example 4096:1024")
            k, n = int(match[1]), int(match[2])
            shapes.append(Shape(f"{k}->{n}", tokens, k, n))
        return shapes
    base = QUICK_SHAPES if args.quick else LLAMA3_8B_SHAPES
    if args.tokens is None:
        return list(base)
    return [Shape(s.name, args.tokens, s.in_features, s.out_features) for s in base]


def lora_flops(shape: Shape, rank: int, with_adapter: bool) -> float:
    """Useful FLOPs of forward + backward: base ``4MNK`` (no dW) plus LoRA ``6Mr(K+N)``."""
    m, k, n = shape.tokens, shape.in_features, shape.out_features
    return 4 * m * n * k + (6 * m * rank * (k + n) if with_adapter else 0)


def make_input_sets(
    shape: Shape,
    rank: int,
    dtype: torch.dtype,
    adapter_dtype: torch.dtype,
    device: torch.device,
    copies: int | None = None,
) -> list[InputSet]:
    """``copies`` operand sets; by default enough to flush L2 between iterations."""
    m, k, n = shape.tokens, shape.in_features, shape.out_features
    element = torch.tensor([], dtype=dtype).element_size()
    set_bytes = (m * k + m * n + n * k) * element
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    count = copies or min(
        MAX_INPUT_SETS, max(MIN_INPUT_SETS, math.ceil(L2_EVICTION_FACTOR * l2_bytes / set_bytes))
    )
    sets = []
    for _ in range(count):
        weight = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
        lora_A = torch.nn.Parameter(torch.randn(rank, k, device=device, dtype=adapter_dtype) / k**0.5)
        lora_B = torch.nn.Parameter(torch.randn(n, rank, device=device, dtype=adapter_dtype) / rank**0.5)
        x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
        grad_y = torch.randn(m, n, device=device, dtype=dtype)
        sets.append(InputSet(x, grad_y, weight, lora_A, lora_B))
    return sets


def attach_peft_layers(sets: list[InputSet], rank: int, dropout: float) -> None:
    """Wrap each set's base weight in a PEFT LoRA ``Linear`` holding that set's A and B."""
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules=["base"])
    for s in sets:
        base = torch.nn.Linear(s.weight.shape[1], s.weight.shape[0], bias=False, device=s.weight.device)
        base.weight = torch.nn.Parameter(s.weight, requires_grad=False)
        layer = PeftLoraLinear(
            base, "default", config=config, r=rank, lora_alpha=2 * rank, lora_dropout=dropout
        )
        layer.lora_A["default"].weight = s.lora_A
        layer.lora_B["default"].weight = s.lora_B
        s.peft_layer = layer.train()


def provider_step(provider: str, rank: int, dropout: float) -> Callable[[InputSet], None]:
    """Forward + backward of one provider on one input set (gradients for x and the adapter only)."""
    scaling = 2.0  # lora_alpha / r with alpha = 2r, as PEFT computes it

    def base(s: InputSet) -> None:
        torch.autograd.grad(F.linear(s.x, s.weight), (s.x,), s.grad_y)

    def ours(backend: str) -> Callable[[InputSet], None]:
        def step(s: InputSet) -> None:
            y = kernels.lora_linear(
                s.x, s.weight, None, s.lora_A, s.lora_B, scaling, dropout, True, backend=backend
            )
            torch.autograd.grad(y, (s.x, s.lora_A, s.lora_B), s.grad_y)

        return step

    def peft(s: InputSet) -> None:
        torch.autograd.grad(s.peft_layer(s.x), (s.x, s.lora_A, s.lora_B), s.grad_y)

    return {"base": base, "torch": ours("torch"), "triton": ours("triton"), "peft": peft}[provider]


def time_step(step: Callable[[InputSet], None], sets: list[InputSet], warmup: int, iters: int) -> list[float]:
    """Milliseconds per call, one CUDA-event pair per iteration (wall clock on the CPU), sets rotated."""
    device = sets[0].x.device
    autocast = torch.autocast(device.type, dtype=sets[0].x.dtype, enabled=sets[0].x.dtype != torch.float32)
    with autocast:
        for i in range(warmup):
            step(sets[i % len(sets)])
        if device.type != "cuda":
            times = []
            for i in range(iters):
                start = time.perf_counter()
                step(sets[i % len(sets)])
                times.append((time.perf_counter() - start) * 1e3)
            return times
        torch.cuda.synchronize(device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
        ]
        for i, (start, end) in enumerate(events):
            start.record()
            step(sets[i % len(sets)])
            end.record()
        torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def fused_kernel_errors(
    shape: Shape, rank: int, dropout: float, dtype: torch.dtype, device: torch.device
) -> dict:
    """Relative errors of the fused kernels' Y, dX, dA, dB against float64 (same dropout mask)."""
    from peftlab.kernels.dropout import dropout_keep_mask
    from peftlab.kernels.lora_function import triton_lora_linear
    from peftlab.kernels.reference import lora_linear_reference

    (s,) = make_input_sets(shape, rank, dtype, torch.float32, device, copies=1)
    seed = 1234
    y = triton_lora_linear(s.x, s.weight, None, s.lora_A, s.lora_B, 2.0, dropout, True, seed=seed)
    got = (y, *torch.autograd.grad(y, (s.x, s.lora_A, s.lora_B), s.grad_y))
    mask = dropout_keep_mask(seed, tuple(s.x.shape), dropout, device) if dropout > 0 else None
    x64, a64, b64 = (t.detach().double().requires_grad_() for t in (s.x, s.lora_A, s.lora_B))
    y64 = lora_linear_reference(x64, s.weight.double(), None, a64, b64, 2.0, dropout, keep_mask=mask)
    want = (y64, *torch.autograd.grad(y64, (x64, a64, b64), s.grad_y.double()))
    return {
        name: ((g.double() - w).norm() / w.norm()).item()
        for name, g, w in zip(("Y", "dX", "dA", "dB"), got, want, strict=True)
    }


def device_name(device: torch.device) -> str:
    """Human-readable device name for the result files."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


def geometric_mean(values: list[float]) -> float:
    """Geometric mean (NaN when empty)."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def ratio_rows(results: list[Result]) -> list[dict]:
    """Per (shape, rank, dropout): ours/base and peft/ours where both were measured."""
    by_key: dict[tuple, dict[str, Result]] = {}
    for r in results:
        by_key.setdefault((r.shape, r.rank, r.dropout), {})[r.provider] = r
    rows = []
    for (shape, rank, dropout), measured in by_key.items():
        ours, base, peft = measured.get("triton"), measured.get("base"), measured.get("peft")
        rows.append(
            {
                "shape": shape.name,
                "rank": rank,
                "dropout": dropout,
                "ours/base": ours.median_ms / base.median_ms if ours and base else None,
                "peft/ours": peft.median_ms / ours.median_ms if ours and peft else None,
            }
        )
    return rows


def target_summary(ratios: list[dict]) -> list[tuple[str, float, float]]:
    """Geometric means at r=16 against the issue's targets: (name, measured, target)."""
    at_rank = [r for r in ratios if r["rank"] == TARGET_RANK]

    def values(key: str, with_dropout: bool | None) -> list[float]:
        return [
            r[key]
            for r in at_rank
            if r[key] is not None and (with_dropout is None or (r["dropout"] > 0) == with_dropout)
        ]

    summary = [
        ("ours/base p=0", geometric_mean(values("ours/base", False)), TARGETS["ours/base p=0"]),
        ("ours/base p>0", geometric_mean(values("ours/base", True)), TARGETS["ours/base p>0"]),
        ("peft/ours", geometric_mean(values("peft/ours", None)), TARGETS["peft/ours"]),
    ]
    return [row for row in summary if not math.isnan(row[1])]


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for the tables, or a dash."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def print_tables(console: Console, results: list[Result], ratios: list[dict], errors: dict) -> None:
    """Console tables: per-provider times, ratios and numerics, and the target summary."""
    table = Table(title="forward + backward, median ms (TFLOP/s)")
    for column in ("shape", "r", "p", *PROVIDERS, "ours/base", "peft/ours", "max rel err"):
        table.add_column(column, justify="right")
    by_key: dict[tuple, dict[str, Result]] = {}
    for r in results:
        by_key.setdefault((r.shape.name, r.rank, r.dropout), {})[r.provider] = r
    for ratio in ratios:
        key = (ratio["shape"], ratio["rank"], ratio["dropout"])
        cells = [
            f"{by_key[key][p].median_ms:.3f} ({by_key[key][p].tflops:.3g})" if p in by_key[key] else "-"
            for p in PROVIDERS
        ]
        err = errors.get(key)
        table.add_row(
            key[0],
            str(key[1]),
            str(key[2]),
            *cells,
            fmt(ratio["ours/base"]),
            fmt(ratio["peft/ours"]),
            fmt(max(err.values()), 6) if err else "-",
        )
    console.print(table)
    for name, measured, target in target_summary(ratios):
        verdict = "meets" if (measured >= target if name == "peft/ours" else measured <= target) else "misses"
        console.print(f"r={TARGET_RANK} geometric mean {name}: {measured:.3f} ({verdict} target {target})")


def result_paths(out: Path, device: str) -> tuple[Path, Path]:
    """``lora_kernels_<device>.csv`` and ``.md`` under ``out``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower()
    return out / f"lora_kernels_{slug}.csv", out / f"lora_kernels_{slug}.md"


def write_results(
    paths: tuple[Path, Path],
    header: dict[str, str],
    results: list[Result],
    ratios: list[dict],
    errors: dict,
    notes: list[str],
) -> None:
    """Write the long-format CSV (one row per measurement) and the markdown report."""
    csv_path, md_path = paths
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "device",
                "shape",
                "tokens",
                "in",
                "out",
                "rank",
                "dropout",
                "provider",
                "median_ms",
                "p20_ms",
                "p80_ms",
                "tflops",
                "command",
            ]
        )
        for r in results:
            writer.writerow(
                [
                    header["device"],
                    r.shape.name,
                    r.shape.tokens,
                    r.shape.in_features,
                    r.shape.out_features,
                    r.rank,
                    r.dropout,
                    r.provider,
                    f"{r.median_ms:.5f}",
                    f"{r.p20_ms:.5f}",
                    f"{r.p80_ms:.5f}",
                    f"{r.tflops:.2f}",
                    header["command"],
                ]
            )
    lines = ["# LoRA linear kernels: forward + backward", ""]
    lines += [f"- {key}: `{value}`" for key, value in header.items()]
    lines += [f"- note: {note}" for note in notes]
    lines += ["", "Median ms over the timed iterations (TFLOP/s of useful work: 4MNK + 6Mr(K+N)).", ""]
    lines += [
        "| shape | r | p | "
        + " | ".join(PROVIDERS)
        + " | ours/base | peft/ours | max rel err (ours vs fp64) |"
    ]
    lines += ["|" + "---|" * (len(PROVIDERS) + 6)]
    by_key: dict[tuple, dict[str, Result]] = {}
    for r in results:
        by_key.setdefault((r.shape.name, r.rank, r.dropout), {})[r.provider] = r
    for ratio in ratios:
        key = (ratio["shape"], ratio["rank"], ratio["dropout"])
        cells = [
            f"{by_key[key][p].median_ms:.3f} ({by_key[key][p].tflops:.3g})" if p in by_key[key] else "-"
            for p in PROVIDERS
        ]
        err = errors.get(key)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | "
            + " | ".join(cells)
            + f" | {fmt(ratio['ours/base'])} | {fmt(ratio['peft/ours'])} | {fmt(max(err.values()), 6) if err else '-'} |"
        )
    summary = target_summary(ratios)
    if summary:
        lines += [
            "",
            f"Targets (r={TARGET_RANK}, geometric mean over shapes):",
            "",
            "| ratio | measured | target |",
        ]
        lines += ["|---|---|---|"] + [f"| {name} | {m:.3f} | {t} |" for name, m, t in summary]
    md_path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = parse_args(argv)
    console = Console(width=200)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        console.print(
            "No CUDA device: the full-size shapes would take hours on the CPU and the Triton kernels need a GPU. "
            "Run with --quick for a CPU smoke run (torch reference and PEFT only)."
        )
        return 2
    name = device_name(device)
    paths = result_paths(args.out, name)
    if not args.overwrite and any(p.exists() for p in paths):
        console.print(
            f"{paths[0]} or {paths[1]} exists; pass --overwrite to replace it, or --out for another folder."
        )
        return 2
    providers = [p for p in PROVIDERS if p in args.providers.split(",")]
    notes = []
    if "triton" in providers and device.type != "cuda":
        providers.remove("triton")
        notes.append("triton rows skipped: no CUDA device (interpreter timings would mean nothing)")
    if "peft" in providers and importlib.util.find_spec("peft") is None:
        providers.remove("peft")
        notes.append("peft rows skipped: peft is not installed")
    for note in notes:
        console.print(note)
    dtype, adapter_dtype = DTYPES[args.dtype], DTYPES[args.adapter_dtype]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    iters = args.iters if args.iters is not None else (3 if args.quick else 50)
    ranks = [int(r) for r in (args.ranks or ("8" if args.quick else "8,16,64")).split(",")]
    dropouts = [float(p) for p in args.dropouts.split(",")]
    torch.manual_seed(0)

    results: list[Result] = []
    errors: dict[tuple, dict[str, float]] = {}
    for shape in selected_shapes(args):
        for rank in ranks:
            for dropout in dropouts:
                sets = make_input_sets(shape, rank, dtype, adapter_dtype, device)
                if "peft" in providers:
                    attach_peft_layers(sets, rank, dropout)
                for provider in providers:
                    times = time_step(provider_step(provider, rank, dropout), sets, warmup, iters)
                    quantiles = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
                    median = statistics.median(times)
                    flops = lora_flops(shape, rank, with_adapter=provider != "base")
                    results.append(
                        Result(
                            shape,
                            rank,
                            dropout,
                            provider,
                            median,
                            quantiles[1],
                            quantiles[7],
                            flops / (median * 1e-3) / 1e12,
                        )
                    )
                del sets
                if "triton" in providers and not args.no_numerics:
                    errors[(shape.name, rank, dropout)] = fused_kernel_errors(
                        shape, rank, dropout, dtype, device
                    )
                console.print(f"done: {shape.name} r={rank} p={dropout}")

    ratios = ratio_rows(results)
    print_tables(console, results, ratios, errors)
    header = {
        "device": name,
        "command": "python "
        + shlex.join(sys.argv if argv is None else ["benchmarks/lora_kernels.py", *argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "peft": _version("peft"),
        "peftlab": revision_text(),
        "dtype": f"{args.dtype} activations/base weight, {args.adapter_dtype} adapters, autocast on",
        "timing": f"median of {iters} iterations after {warmup} warm-up, operands rotated through copies > L2",
    }
    write_results(paths, header, results, ratios, errors, notes)
    console.print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _version(package: str) -> str:
    if importlib.util.find_spec(package) is None:
        return "not installed"
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
