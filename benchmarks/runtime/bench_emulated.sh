#!/usr/bin/env bash
# The raspberrypi target without a device: aarch64 emulation (qemu-user) + the Pi 4/5 ESTIMATE.
#
#   bash benchmarks/runtime/setup_arm64_emulation.sh      # once (root; apt-get download, pip download)
#   bash benchmarks/runtime/bench_emulated.sh [BUNDLE...]  # default: the shipped bundle
#
# Writes benchmarks/runtime/emulated.json, emulated.png and emulated.txt. The emulated timings are
# NOT Pi latencies; the run proves the model runs on ARM kernels and matches the x86 outputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/runtime
bundles=("$@")
[ ${#bundles[@]} -eq 0 ] && bundles=(src/osteo_edge/models/default)
args=()
for b in "${bundles[@]}"; do args+=(--model "$b"); done
COLUMNS=220 .venv/bin/osteo-edge bench --target raspberrypi --emulate "${args[@]}" --threads "${THREADS:-1}" --runs "${RUNS:-10}" --warmup 1 --json "$OUT/emulated.json" | tee "$OUT/emulated.txt"
