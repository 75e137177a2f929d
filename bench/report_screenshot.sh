#!/usr/bin/env bash
# Renders an imp run report (RUN_DIR/report.html) with headless Chromium and
# saves a PNG screenshot, to check by eye that the page and its charts draw.
#
# Usage, from the repository root:
#   bench/report_screenshot.sh [RUN_DIR [OUT.png]]
# RUN_DIR defaults to a small fake run directory built in a temporary folder.
# OUT.png defaults to RUN_DIR/report_screenshot.png.
# If build/imp (or $IMP_BIN) exists and its help mentions `report`, the script
# runs `imp report RUN_DIR` first; otherwise RUN_DIR/report.html must exist.
# Needs Debian's chromium package (apt-get install chromium).
set -euo pipefail

imp_bin="${IMP_BIN:-build/imp}"
min_png_bytes=5000

# Writes a fake run directory with two tasks, two MoE layers, three
# evaluations and every optional file, so every section of the page shows.
make_fake_run() {
  local dir="$1"
  : > "$dir/metrics.jsonl"
  local step
  for step in $(seq 100 100 2000); do
    awk -v step="$step" 'BEGIN {
      t = step / 2000
      printf "{\"step\": %d, \"total_steps\": 2000, \"wall_s\": %.1f, \"lr\": %.6f, ", step, step * 0.08, 0.001 * (step < 400 ? step / 400 : 1 - 0.9 * t)
      printf "\"loss\": {\"fmnist_cls\": %.4f, \"video_item\": %.4f}, ", 2.3 * exp(-4 * t) + 0.05, 4.0 * exp(-2 * t) + 0.4
      printf "\"steps\": {\"fmnist_cls\": %d, \"video_item\": %d}, ", step * 0.6, step * 0.4
      printf "\"tokens_per_s\": %.1f, \"examples_per_s\": %.1f, \"ms_per_step\": %.1f, \"data_wait\": %.3f, ", 52000 + 3000 * sin(step), 3100 + 200 * sin(step), 78 + 5 * cos(step), 0.012
      printf "\"expert_load\": {\"1\": {\"image\": [%.3f, %.3f, %.3f, %.3f], \"video\": [%.3f, %.3f, %.3f, %.3f]}, ", 0.25 + 0.1 * t, 0.25 - 0.1 * t, 0.25, 0.25, 0.1, 0.6 - 0.2 * t, 0.2 + 0.2 * t, 0.1
      printf "\"3\": {\"image\": [%.3f, %.3f, %.3f, %.3f], \"video\": [%.3f, %.3f, %.3f, %.3f]}}}\n", 0.4 - 0.15 * t, 0.2, 0.2 + 0.15 * t, 0.2, 0.25, 0.25, 0.25, 0.25
    }' >> "$dir/metrics.jsonl"
  done
  printf '%s\n' \
    '{"step": 700, "metrics": {"fmnist/head_top1": 0.71, "fmnist/probe_top1": 0.69, "fmnist_video/item_zeroshot_top1": 0.52}}' \
    '{"step": 1400, "metrics": {"fmnist/head_top1": 0.84, "fmnist/probe_top1": 0.80, "fmnist_video/item_zeroshot_top1": 0.66}}' \
    '{"step": 2000, "metrics": {"fmnist/head_top1": 0.8811, "fmnist/probe_top1": 0.85, "fmnist_video/item_zeroshot_top1": 0.7475}}' \
    > "$dir/evals.jsonl"
  printf '{"fmnist/head_top1": 0.8811, "fmnist/probe_top1": 0.85, "fmnist_video/item_zeroshot_top1": 0.7475, "train_seconds": 548.6}\n' \
    > "$dir/eval.json"
  printf '%s\n' '{"layers": [' \
    '{"layer": 1, "modalities": {"image": {"top_choice_share": [0.35, 0.15, 0.25, 0.25], "expert_share": [0.3, 0.2, 0.25, 0.25], "num_tokens": 51200, "dropped_tokens": 0, "dropped_fraction": 0.0},' \
    '  "video": {"top_choice_share": [0.1, 0.5, 0.3, 0.1], "expert_share": [0.15, 0.45, 0.3, 0.1], "num_tokens": 20480, "dropped_tokens": 12, "dropped_fraction": 0.0006}}},' \
    '{"layer": 3, "modalities": {"image": {"top_choice_share": [0.25, 0.2, 0.35, 0.2], "num_tokens": 51200},' \
    '  "video": {"top_choice_share": [0.25, 0.25, 0.25, 0.25], "num_tokens": 20480}}}' \
    ']}' > "$dir/routing.json"
  printf 'model:\n  preset: tiny\n  moe_layers: [1, 3]\n  num_experts: 4\ntrain:\n  steps: 2000\n  lr: 0.001\n' \
    > "$dir/config.yaml"
}

if [[ $# -ge 1 ]]; then
  run_dir="$1"
else
  run_dir="$(mktemp -d "${TMPDIR:-/tmp}/imp_report_run_XXXXXX")"
  make_fake_run "$run_dir"
  echo "built a fake run directory in $run_dir"
fi
out_png="${2:-$run_dir/report_screenshot.png}"

help_text=""
if [[ -x "$imp_bin" ]]; then
  # `|| true`: a CLI may exit non-zero after printing its help.
  help_text="$("$imp_bin" --help 2>&1 || true)"
fi
if grep -qw report <<< "$help_text"; then
  "$imp_bin" report "$run_dir"
else
  echo "skipping '$imp_bin report': not built or has no report command; using the existing report.html"
fi
if [[ ! -f "$run_dir/report.html" ]]; then
  echo "error: $run_dir/report.html not found; build imp with its report command or write the page first" >&2
  exit 1
fi

if ! command -v chromium > /dev/null; then
  echo "error: chromium not found; install it with: apt-get install chromium" >&2
  exit 1
fi
# --no-sandbox: Chromium does not start as root without it.
rm -f "$out_png"
timeout 120 chromium --headless --disable-gpu --no-sandbox --hide-scrollbars \
  --screenshot="$out_png" --window-size=1280,2400 "file://$(realpath "$run_dir/report.html")" \
  > /dev/null 2>&1 || true

if [[ ! -f "$out_png" ]]; then
  echo "error: chromium wrote no screenshot to $out_png" >&2
  exit 1
fi
size=$(stat -c %s "$out_png")
if (( size < min_png_bytes )); then
  echo "error: $out_png is only $size bytes, so the page probably rendered blank" >&2
  exit 1
fi
echo "screenshot: $out_png ($size bytes)"
