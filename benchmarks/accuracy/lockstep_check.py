"""Train peftlab's LoRA and ``peft``'s LoRA in lockstep on MiniLM and report how far they drift apart.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/lockstep_check.py [--steps 6]

Both get the same base weights and head (same seed), peft's ``lora_A`` draw copied into ours, the same
Pang & Lee batches (anchor recipe), AdamW with the same settings, and the same dropout random state before
each step. Identical losses and parameters mean that two runs of the accuracy experiment differ only by
their random draws (the ``A`` initialisation order and the dropout stream), not by the method.
"""

from __future__ import annotations

import argparse

import peft
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from peftlab.builder import build_base_model, build_for_run, build_tokenizer
from peftlab.data import load_data, model_inputs
from peftlab.hydra_app import CONFIG_PATH
from peftlab.train import make_loader, seed_everything


def main() -> None:
    """Build both models, train them side by side, print per-step losses and the final parameter gap."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    overrides = ["output_dir=unused", "experiment=accuracy_minilm_pang_lee", "method=lora", "train.lr=1e-3"]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
        settings = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    seed_everything(settings.seed)
    ours, tokenizer = build_for_run(settings, None)
    seed_everything(settings.seed)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, target_modules=["query", "value"])
    theirs = peft.get_peft_model(build_base_model(settings.model, build_tokenizer(settings.model), 0), lora)
    ours_params = [p for p in ours.parameters() if p.requires_grad]
    theirs_params = [p for p in theirs.parameters() if p.requires_grad]
    with torch.no_grad():
        for mine, reference in zip(ours_params, theirs_params, strict=True):
            mine.copy_(reference)  # A: peft's draw; B: zeros in both; head: the same init already
    optimizers = [
        torch.optim.AdamW(params, lr=settings.train.lr, weight_decay=settings.train.weight_decay)
        for params in (ours_params, theirs_params)
    ]
    data = load_data(settings.data, tokenizer, settings.model.task, settings.model.num_labels)
    loader = make_loader(data.train.examples, settings, tokenizer, shuffle=True)
    for step, batch in zip(range(args.steps), loader.batches(0, 0), strict=False):
        losses = []
        for model, optimizer in zip((ours.train(), theirs.train()), optimizers, strict=True):
            torch.manual_seed(1000 + step)  # the same dropout masks for both
            logits = model(**model_inputs(batch)).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        print(f"step {step}: loss ours {losses[0]:.7f}  peft {losses[1]:.7f}")
    gap = max((a - b).abs().max().item() for a, b in zip(ours_params, theirs_params, strict=True))
    print(f"largest difference of any trained parameter after {args.steps} steps: {gap:.3g}")


if __name__ == "__main__":
    main()
