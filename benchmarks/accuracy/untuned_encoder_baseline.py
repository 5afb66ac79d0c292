"""Test accuracy of an encoder before any tuning: the pretrained body with its newly initialised head.

    OMP_NUM_THREADS=1 python benchmarks/accuracy/untuned_encoder_baseline.py [--seeds 0 1 2] [overrides...]

The overrides compose ``configs/`` as ``peftlab train`` does (default: the anchor experiment); the head
is drawn exactly as a run with that seed draws it, and the model scores ``data.valid_file`` (the test
split in ``experiment=accuracy_minilm_pang_lee``). Prints one JSON line per seed.
"""

from __future__ import annotations

import argparse
import json

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from peftlab.builder import build_base_model, build_tokenizer
from peftlab.hydra_app import CONFIG_PATH
from peftlab.scoring import classifier_accuracy
from peftlab.train import seed_everything

DEFAULT_OVERRIDES = ["experiment=accuracy_minilm_pang_lee"]


def main() -> None:
    """Score the untuned model for each seed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", default=DEFAULT_OVERRIDES)
    args = parser.parse_args()
    for seed in args.seeds:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_PATH):
            cfg = compose(
                config_name="config", overrides=["output_dir=unused", *args.overrides, f"seed={seed}"]
            )
        settings = OmegaConf.to_object(cfg)
        seed_everything(seed)
        tokenizer = build_tokenizer(settings.model)
        model = build_base_model(settings.model, tokenizer, seed)
        with open(settings.data.valid_file, encoding="utf-8") as stream:
            records = [json.loads(line) for line in stream if line.strip()]
        result = classifier_accuracy(
            model,
            tokenizer,
            [r[settings.data.text_field] for r in records],
            [r[settings.data.label_field] for r in records],
            max_length=settings.data.max_length,
        )
        print(
            json.dumps(
                {
                    "seed": seed,
                    "file": settings.data.valid_file,
                    "examples": result.total,
                    "accuracy": result.accuracy,
                }
            )
        )


if __name__ == "__main__":
    main()
