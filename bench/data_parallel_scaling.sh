#!/usr/bin/env bash
# Data-parallel scaling on one machine: tokens/s of one process with 2
# threads against 2 processes with 1 thread each (torchrun's variables set
# by hand, rendezvous on 127.0.0.1), on Fashion-MNIST image classification
# with the tiny model. Prints both rates and the scaling efficiency
# (two-process rate over one-process rate), then the rate of the same two
# processes with train.expert_parallel (each holding 2 of the 4 experts of
# each MoE layer) over the data-parallel one.
#
# Usage, from the repository root after building build/imp:
#   bench/data_parallel_scaling.sh [STEPS [BATCH]]
set -euo pipefail

steps="${1:-400}"
batch="${2:-128}"
imp="${IMP_BIN:-build/imp}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/config.yaml" <<YAML
workdir: $work/run
cache_dir: $work/cache
model: {preset: tiny}
tokenizer: {vocab_size: 256}
datasets:
  - {name: fmnist, type: fashion_mnist, root: /usr/share/datasets/fashion-mnist, hflip: false, eval_examples: 500}
tasks:
  - {name: fmnist_cls, dataset: fmnist, modalities: [image], objective: softmax_ce, batch_size: $batch}
train: {steps: $steps, log_every: $steps, workers: 1, dtype: fp32, progress: lines, tensorboard: false, checkpoint_every: 0}
eval: {linear_probe_examples: 200, linear_probe_steps: 5}
YAML

# Mean tokens/s over the run, from the last metrics.jsonl record.
rate() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["tokens_per_s"])' "$1"; }

echo "data_parallel_scaling: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, $steps steps, batch $batch, fp32, tiny model"

OMP_WAIT_POLICY=PASSIVE "$imp" train "$work/config.yaml" --set train.threads=2 --set "workdir=$work/one" > "$work/one.log" 2>&1
one=$(rate "$work/one/metrics.jsonl")

# Two processes of one thread; extra arguments go to both.
run_two() {
  local name="$1"; shift
  local port pids=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for rank in 0 1; do
    RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 \
      "$imp" train "$work/config.yaml" --set train.threads=1 --set "workdir=$work/$name" "$@" \
      > "$work/$name-rank$rank.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
run_two two
two=$(rate "$work/two/metrics.jsonl")
run_two experts --set train.expert_parallel=true
experts=$(rate "$work/experts/metrics.jsonl")

python3 - "$one" "$two" "$experts" <<'PY'
import sys
one, two, experts = (float(x) for x in sys.argv[1:])
print(f"data_parallel_scaling: 1 process x 2 threads: {one:.0f} tokens/s")
print(f"data_parallel_scaling: 2 processes x 1 thread: {two:.0f} tokens/s")
print(f"data_parallel_scaling: 2 processes x 1 thread, expert parallel: {experts:.0f} tokens/s")
print(f"expert_parallel_vs_data_parallel={experts / two:.3f}")
print(f"scaling_efficiency={two / one:.3f}")
PY
