#!/usr/bin/env bash
# Host benchmark of the shipped exports against their torch fp32 parent, all in one run.
#
#   bash benchmarks/runtime/bench_host.sh [BUNDLE...]      (default: the shipped bundle)
#   NAME=shipped THREADS=1,2 OSTEO_EDGE="env PYTHONPATH=src /work/main/.venv/bin/osteo-edge" bash benchmarks/runtime/bench_host.sh
#
# Writes benchmarks/runtime/$NAME.json, .png and .txt (the table; NAME defaults to host). Every bundle
# whose provenance names its parent training run gets that torch fp32 model measured in the same run;
# without the run, a torch fp32 model of the bundle's architecture (random weights, latency only).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/runtime
bundles=("$@")
[ ${#bundles[@]} -eq 0 ] && bundles=(src/osteo_edge/models/default)
args=()
for b in "${bundles[@]}"; do args+=(--model "$b"); done
NAME=${NAME:-host}
COLUMNS=200 ${OSTEO_EDGE:-.venv/bin/osteo-edge} bench --target host "${args[@]}" --threads "${THREADS:-2}" --runs "${RUNS:-200}" --warmup 20 --json "$OUT/$NAME.json" | tee "$OUT/$NAME.txt"
