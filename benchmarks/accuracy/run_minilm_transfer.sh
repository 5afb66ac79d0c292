#!/usr/bin/env bash
# MiniLM on BIG-bench presuppositions_as_nli started from an intermediate task, as the LoRA paper starts
# RTE and MRPC from MNLI: per method, one run on vitaminc_fact_verification (experiment=
# accuracy_minilm_vitaminc, seed 0), then the NLI task's test recipe continued from it with a new head
# (train.init_head=new), for every seed. Each method uses the rate the NLI task's validation sweep chose.
#   bash benchmarks/accuracy/run_minilm_transfer.sh [SEEDS, default 0,1,2] [METHODS, default all four]
# Results: runs/accuracy/minilm_vitaminc (the intermediate runs) and
# runs/accuracy/minilm_presuppositions_nli_from_vitaminc/test (the report).
set -euo pipefail
seeds="${1:-0,1,2}"
methods="${2:-lora prefix_tuning prompt_tuning full}"
first="runs/accuracy/minilm_vitaminc"
out="runs/accuracy/minilm_presuppositions_nli_from_vitaminc"
# the rates benchmarks/accuracy/run_minilm_task.sh chose on presuppositions_as_nli's validation split
declare -A rate=([full]=5e-5 [lora]=1e-3 [prefix_tuning]=1e-2 [prompt_tuning]=3e-2)
for method in ${methods}; do
  intermediate="${first}/${method}_lr${rate[$method]}_seed0"
  peftlab train experiment=accuracy_minilm_vitaminc "method=${method}" "train.lr=${rate[$method]}" seed=0 \
    "hydra.run.dir=${intermediate}"
  peftlab train -m experiment=accuracy_minilm_presuppositions_nli "method=${method}" "train.lr=${rate[$method]}" \
    "seed=${seeds}" data=presuppositions_nli_test "train.init_from=${intermediate}" train.init_head=new \
    "hydra.sweep.dir=${out}/test"
done
peftlab report "${out}/test"
