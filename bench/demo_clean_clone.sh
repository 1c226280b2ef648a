#!/bin/bash
# `make demo` from a clean clone, offline, twice: the first run installs and runs every stage, the second must skip
# them all.   bash bench/demo_clean_clone.sh [CLONE_DIR]   (prints the two wall times in seconds)
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
clone=${1:-/tmp/capo-demo-clone}
rm -rf "$clone" && git clone -q "$src" "$clone" && cd "$clone" || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
for run in first second; do
  start=$(date +%s)
  make demo > "demo_$run.log" 2>&1
  echo "$run run: rc=$? $(( $(date +%s) - start )) s (log: $clone/demo_$run.log)"
done
