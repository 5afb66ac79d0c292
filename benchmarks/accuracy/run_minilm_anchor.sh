#!/usr/bin/env bash
# MiniLM-L6 on Pang & Lee with the peft anchor's recipe and learning rates: 4 methods x the given seeds,
# all in one sweep folder (runs/accuracy/minilm_pang_lee), then the report.
#   bash benchmarks/accuracy/run_minilm_anchor.sh [SEEDS, default 0] [extra overrides...]
set -euo pipefail
seeds="${1:-0}"
shift || true
declare -A anchor_lr=([full]=5e-5 [lora]=1e-3 [prefix_tuning]=1e-2 [prompt_tuning]=3e-2)
for method in lora prefix_tuning prompt_tuning full; do
  peftlab train -m experiment=accuracy_minilm_pang_lee "method=${method}" "train.lr=${anchor_lr[$method]}" \
    "seed=${seeds}" "$@"
done
peftlab report runs/accuracy/minilm_pang_lee
