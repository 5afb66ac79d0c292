#!/usr/bin/env bash
# One MiniLM accuracy task end to end: per method, a learning-rate sweep on the validation split, the
# best rate (benchmarks/accuracy/select_lr.py) trained with every seed and scored on the test split.
#   bash benchmarks/accuracy/run_minilm_task.sh TASK [SEEDS, default 0,1,2] [METHODS, default all four] \
#       [VARIANT OVERRIDES, default none] [VARIANT NAME, default variant]
#   TASK: pang_lee | presuppositions_nli | bbc_news | strategyqa  (configs/experiment/accuracy_minilm_TASK.yaml)
#   VARIANT OVERRIDES: extra Hydra overrides for every run, e.g. "method.modules_to_save=[pooler]"
# Results: runs/accuracy/minilm_TASK/valid (the sweep) and runs/accuracy/minilm_TASK/test (the report);
# with variant overrides, runs/accuracy/minilm_TASK_NAME/{valid,test}.
set -euo pipefail
task="$1"
seeds="${2:-0,1,2}"
methods="${3:-lora prefix_tuning prompt_tuning full}"
read -r -a variant <<< "${4:-}"
here="$(cd "$(dirname "$0")" && pwd)"
out="runs/accuracy/minilm_${task}${4:+_${5:-variant}}"
# two candidates per method: the Pang & Lee anchor's rate and the next one up (x3 or x2)
source "${here}/minilm_rates.sh"
for method in ${methods}; do
  peftlab train -m "experiment=accuracy_minilm_${task}" "method=${method}" "train.lr=${grid[$method]}" \
    seed=0 "data=${task}_valid" "hydra.sweep.dir=${out}/valid" "${variant[@]}"
  lr="$(python "${here}/select_lr.py" "${out}/valid" "${method}")"
  peftlab train -m "experiment=accuracy_minilm_${task}" "method=${method}" "train.lr=${lr}" \
    "seed=${seeds}" "data=${task}_test" "hydra.sweep.dir=${out}/test" "${variant[@]}"
done
peftlab report "${out}/test"
