#!/usr/bin/env bash
# The cost of alternating between tasks: tokens/s of four image
# classification tasks drawn one per step (bench/configs/agd_four.yaml)
# against one such task at the same tokens per step (agd_single.yaml).
# Both run through bench_train in pairs, the order flipped every round, so
# that the slow drifts of a shared machine reach both configs alike. Prints
# every run, each round's ratio (four over single), then the median ratio
# and, on the last line, agd_overhead=<1 - median ratio>.
#
# Usage, from the repository root after building build/bench/bench_train:
#   bench/agd_overhead.sh [ROUNDS [STEPS [DTYPE]]]
# DTYPE defaults to fp32. In one series on a 2-core machine, bf16 runs
# (whose OpenMP threads spin while they wait) ranged from about 31,000 to
# 45,000 tokens/s for either config, and fp32 runs (whose threads sleep)
# from about 22,000 to 27,000.
set -euo pipefail

rounds="${1:-6}"
steps="${2:-300}"
dtype="${3:-fp32}"
bench="${BENCH_TRAIN:-build/bench/bench_train}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ && "$steps" =~ ^[1-9][0-9]*$ ]]; then
  echo "agd_overhead: ROUNDS and STEPS must be positive integers, got '$rounds' and '$steps'" >&2
  exit 2
fi
if [[ ! -x "$bench" ]]; then
  echo "agd_overhead: $bench not found; build it with ./scripts/build.sh --target bench_train" \
       "or point BENCH_TRAIN at it" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "agd_overhead: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores," \
     "$rounds rounds of $steps steps per config, $dtype"

# Prints the tokens/s of one bench_train run of config $1.
run() {
  local name="$1" out
  if ! out="$("$bench" "bench/configs/$name.yaml" --set "train.steps=$steps" --set "workdir=$work/$name" \
              --set "cache_dir=$work/cache" --set "train.dtype=$dtype" 2>&1)"; then
    echo "agd_overhead: bench_train failed on bench/configs/$name.yaml:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$out" | sed -n 's/^bench_train: .* steps in .* \([0-9.]*\) tokens\/s.*/\1/p'
}

ratios=()
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then
    single=$(run agd_single); four=$(run agd_four)
  else
    four=$(run agd_four); single=$(run agd_single)
  fi
  ratio=$(python3 -c "print(f'{$four / $single:.4f}')")
  ratios+=("$ratio")
  echo "agd_overhead: round $round: single $single tokens/s, four $four tokens/s, ratio $ratio"
done

python3 - "${ratios[@]}" <<'PY'
import statistics, sys
ratios = [float(r) for r in sys.argv[1:]]
median = statistics.median(ratios)
print(f"agd_overhead: ratio four/single: median {median:.4f}, min {min(ratios):.4f}, max {max(ratios):.4f}")
print(f"agd_overhead={1 - median:.4f}")
PY
