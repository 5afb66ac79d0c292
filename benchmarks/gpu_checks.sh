#!/usr/bin/env bash
# The checks that need a CUDA GPU, in stages that each fit one short call on a lent machine that has
# PyTorch, Triton and peft but cannot reach a package index.
#
#   bash benchmarks/gpu_checks.sh wheels            # here, with pip access: pure-Python wheels into .whl/
#   bash benchmarks/gpu_checks.sh tests   [OUT]     # on the GPU: CUDA kernel and LoRA tests vs float64 / peft
#   bash benchmarks/gpu_checks.sh kernels [OUT]     # on the GPU: benchmarks/lora_kernels.py (all shapes, r, p)
#   bash benchmarks/gpu_checks.sh e2e     [OUT]     # on the GPU: experiment=bench_llama_1b sweep + report
#
# Each GPU stage first installs the carried wheels (.whl/, ignored by git) and peftlab itself without
# touching the machine's torch/triton, then writes logs and results under OUT (default $OUT, else
# benchmarks/results/gpu). Copy what comes back under benchmarks/results/ and commit it with the device.
set -euo pipefail
stage="${1:?stage: wheels | tests | kernels | e2e}"
out="${2:-${OUT:-benchmarks/results/gpu}}"
wheels=".whl"
# what the lent machine lacks, at the versions CI tests with (all pure Python)
carried=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 transformers==5.23.0)

install_carried() {
  if compgen -G "${wheels}/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels}"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:${PYTHONPATH}}"
  fi
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /dev/null
  python3 -c "import torch, triton, peftlab.kernels; print('torch', torch.__version__, 'triton', \
triton.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
}

case "${stage}" in
  wheels)
    mkdir -p "${wheels}"
    grep -qx '/.whl/' .git/info/exclude 2> /dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip wheel -q --no-deps -w "${wheels}" "${carried[@]}"
    ls -la "${wheels}"
    ;;
  tests)
    install_carried
    mkdir -p "${out}"
    set -o pipefail
    python3 -m pytest -q -p no:cacheprovider tests/test_kernel_*.py tests/test_lora*.py 2>&1 \
      | tee "${out}/gpu_tests.log"
    ;;
  kernels)
    install_carried
    mkdir -p "${out}"
    set -o pipefail
    PYTHONUNBUFFERED=1 python3 benchmarks/lora_kernels.py --out "${out}" 2>&1 | tee "${out}/lora_kernels.log"
    ;;
  e2e)
    install_carried
    mkdir -p "${out}"
    set -o pipefail
    sweep="runs/bench/gpu_e2e"
    PYTHONUNBUFFERED=1 peftlab bench experiment=bench_llama_1b "hydra.sweep.dir=${sweep}" 2>&1 \
      | tee "${out}/bench_llama_1b.log"
    peftlab report "${sweep}" --out "${out}/bench_llama_1b"
    ;;
  *)
    echo "unknown stage ${stage}: wheels | tests | kernels | e2e" >&2
    exit 2
    ;;
esac
