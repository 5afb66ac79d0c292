#!/usr/bin/env bash
# One SmolLM2-135M accuracy task as a decoder, end to end: the untuned (zero-shot) baseline on the test
# split, then per method a learning-rate sweep on the validation split, the best rate (select_lr.py)
# trained with every seed and scored on the test split, then `peftlab report`.
#   bash benchmarks/accuracy/run_smollm2_task.sh TASK [SEEDS, default 0] [METHODS: method configs, default all six]
#   TASK: pang_lee | strategyqa | presuppositions_nli | bbc_news  (configs/experiment/accuracy_smollm2_TASK.yaml)
# Results: runs/accuracy/smollm2_TASK/{zero_shot.json,valid,test}. peftlab refuses to train into a run
# folder that already holds a run, so more seeds later are one `peftlab train -m ... seed=3,4` by hand.
set -euo pipefail
task="$1"
seeds="${2:-0}"
methods="${3:-lora prompt_tuning prefix_tuning prefix_tuning_mlp prefix_tuning_real_tokens full}"
here="$(cd "$(dirname "$0")" && pwd)"
out="runs/accuracy/smollm2_${task}"
declare -A folder=([pang_lee]=pang_lee [strategyqa]=strategyqa [presuppositions_nli]=presuppositions_as_nli
  [bbc_news]=bbc_news)
mkdir -p "${out}"
if [[ ! -f "${out}/zero_shot.json" ]]; then
  # scored as the tuned runs are: prompts cut to the experiment's data.max_length
  max_length="$(peftlab train "experiment=accuracy_smollm2_${task}" --cfg job --package data.max_length | tail -1)"
  python "${here}/zero_shot_baseline.py" --max-length "${max_length}" \
    "${PEFTLAB_ACCURACY_DATA:-data/accuracy}/${folder[$task]}_completion/test.jsonl" > "${out}/zero_shot.json.tmp"
  mv "${out}/zero_shot.json.tmp" "${out}/zero_shot.json"
fi
# two candidates per method: the same for every task
declare -A grid=([full]=1e-5,3e-5 [lora]=1e-3,3e-3 [prefix_tuning]=3e-3,1e-2 [prefix_tuning_mlp]=1e-3,3e-3
  [prefix_tuning_real_tokens]=3e-3,1e-2 [prompt_tuning]=3e-2,1e-1)
for method in ${methods}; do
  peftlab train -m "experiment=accuracy_smollm2_${task}" "method=${method}" "train.lr=${grid[$method]}" \
    seed=0 "data=${task}_completion_valid" "hydra.sweep.dir=${out}/valid"
  lr="$(python "${here}/select_lr.py" "${out}/valid" "${method}")"
  peftlab train -m "experiment=accuracy_smollm2_${task}" "method=${method}" "train.lr=${lr}" \
    "seed=${seeds}" "hydra.sweep.dir=${out}/test"
done
peftlab report "${out}/test"
