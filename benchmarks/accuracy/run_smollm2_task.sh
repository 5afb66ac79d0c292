#!/usr/bin/env bash
# SmolLM2-135M on Pang & Lee as a decoder, end to end: the untuned baseline on the test split, then per
# method a learning-rate sweep on the validation split (2,700 / 300 cut of the training sentences), the
# best rate (select_lr.py) trained with every seed and scored on the test split, then `peftlab report`.
#   bash benchmarks/accuracy/run_smollm2_pang_lee.sh [SEEDS, default 0] [METHODS: method configs, default all six]
# Results: runs/accuracy/smollm2_pang_lee/{zero_shot.json,valid,test}.
set -euo pipefail
seeds="${1:-0}"
methods="${2:-lora prompt_tuning prefix_tuning prefix_tuning_mlp prefix_tuning_real_tokens full}"
here="$(cd "$(dirname "$0")" && pwd)"
out="runs/accuracy/smollm2_pang_lee"
mkdir -p "${out}"
if [[ ! -f "${out}/zero_shot.json" ]]; then
  python "${here}/zero_shot_baseline.py" data/accuracy/pang_lee_completion/test.jsonl > "${out}/zero_shot.json.tmp"
  mv "${out}/zero_shot.json.tmp" "${out}/zero_shot.json"
fi
declare -A grid=([full]=1e-5,3e-5 [lora]=1e-3,3e-3 [prefix_tuning]=3e-3,1e-2 [prefix_tuning_mlp]=1e-3,3e-3
  [prefix_tuning_real_tokens]=3e-3,1e-2 [prompt_tuning]=3e-2,1e-1)
for method in ${methods}; do
  peftlab train -m experiment=accuracy_smollm2_pang_lee "method=${method}" "train.lr=${grid[$method]}" \
    seed=0 data=pang_lee_completion_valid "hydra.sweep.dir=${out}/valid"
  lr="$(python "${here}/select_lr.py" "${out}/valid" "${method}")"
  peftlab train -m experiment=accuracy_smollm2_pang_lee "method=${method}" "train.lr=${lr}" \
    "seed=${seeds}" "hydra.sweep.dir=${out}/test"
done
peftlab report "${out}/test"
