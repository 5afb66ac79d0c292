#!/usr/bin/env bash
# MiniLM on BIG-bench presuppositions_as_nli started from an intermediate task, as the LoRA paper starts
# RTE and MRPC from MNLI. Per method: runs on vitaminc_fact_verification (experiment=
# accuracy_minilm_vitaminc, seed 0) at two rates, the better on vitaminc's validation split
# (select_lr.py), then the NLI task's test recipe continued from it with a new head
# (train.init_head=new), for every seed, at the rate the NLI task's own validation sweep chose.
#   bash benchmarks/accuracy/run_minilm_transfer.sh [SEEDS, default 0,1,2] [METHODS, default all four]
# Results: runs/accuracy/minilm_vitaminc (the intermediate runs; one already finished is reused) and
# runs/accuracy/minilm_presuppositions_nli_from_vitaminc/test (the report).
set -euo pipefail
seeds="${1:-0,1,2}"
methods="${2:-lora prefix_tuning prompt_tuning full}"
here="$(cd "$(dirname "$0")" && pwd)"
first="runs/accuracy/minilm_vitaminc"
out="runs/accuracy/minilm_presuppositions_nli_from_vitaminc"
# the rates benchmarks/accuracy/run_minilm_task.sh chose on presuppositions_as_nli's validation split
declare -A rate=([full]=5e-5 [lora]=1e-3 [prefix_tuning]=1e-2 [prompt_tuning]=3e-2)
# the intermediate candidates: the same two per method as run_minilm_task.sh sweeps
source "${here}/minilm_rates.sh"
for method in ${methods}; do
  for lr in ${grid[$method]//,/ }; do
    run="${first}/${method}_lr${lr}_seed0"
    if [ -f "${run}/result.json" ]; then echo "reusing ${run}"; continue; fi
    peftlab train experiment=accuracy_minilm_vitaminc "method=${method}" "train.lr=${lr}" seed=0 "hydra.run.dir=${run}"
  done
  best="$(python "${here}/select_lr.py" "${first}" "${method}")"
  for lr in ${grid[$method]//,/ }; do
    if python -c "import sys; sys.exit(float(sys.argv[1]) != float(sys.argv[2]))" "${lr}" "${best}"; then
      intermediate="${first}/${method}_lr${lr}_seed0"
    fi
  done
  peftlab train -m experiment=accuracy_minilm_presuppositions_nli "method=${method}" "train.lr=${rate[$method]}" \
    "seed=${seeds}" data=presuppositions_nli_test "train.init_from=${intermediate}" train.init_head=new \
    "hydra.sweep.dir=${out}/test"
done
peftlab report "${out}/test"
