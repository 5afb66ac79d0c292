# Sourced by the MiniLM run scripts: each method's two candidate learning rates, the Pang & Lee
# anchor's rate and the next one up (x3 or x2), comma-separated as a Hydra sweep takes them.
# shellcheck disable=SC2034  # used by the scripts that source this file
declare -A grid=([full]=5e-5,1e-4 [lora]=1e-3,3e-3 [prefix_tuning]=1e-2,3e-2 [prompt_tuning]=3e-2,1e-1)
