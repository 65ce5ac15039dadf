#!/usr/bin/env bash
# Host benchmark of the shipped exports against their torch fp32 parent, all in one run.
#
#   bash benchmarks/runtime/bench_host.sh [BUNDLE...]      (default: the shipped bundle)
#
# Writes benchmarks/runtime/host.json, host.png and host.txt (the table). Every bundle whose
# provenance names its parent training run gets that torch fp32 model measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/runtime
bundles=("$@")
[ ${#bundles[@]} -eq 0 ] && bundles=(src/osteo_edge/models/default)
args=()
for b in "${bundles[@]}"; do args+=(--model "$b"); done
COLUMNS=200 .venv/bin/osteo-edge bench --target host "${args[@]}" --threads "${THREADS:-2}" --runs "${RUNS:-200}" --warmup 20 --json "$OUT/host.json" | tee "$OUT/host.txt"
