#!/usr/bin/env bash
# Every runtime measurement of the shipped bundle, in order. Outputs land in benchmarks/runtime/.
#
#   bash benchmarks/runtime/run_all.sh SPLIT_CSV [EXTRA_BUNDLE...]
#
# 1. calibrate the input gate on SPLIT_CSV and write it into the shipped bundle (gate/*)
# 2. fresh venv with only the runtime extra: size, import time, first prediction (fresh_venv.json)
# 3. bench --target host: the shipped bundle + EXTRA_BUNDLEs, torch fp32 parent in the same run (host.*);
#    then the shipped bundle alone at 1 and 2 threads, as a user without the training run sees it:
#    the torch reference is its architecture with random weights, latency only (shipped.*)
# 4. bench --target raspberrypi without a host: aarch64 emulation + Pi estimate (emulated.*), when the
#    kit exists (benchmarks/runtime/setup_arm64_emulation.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
SPLIT="$1"; shift
DEFAULT=src/osteo_edge/models/default
PY=.venv/bin/python
$PY benchmarks/runtime/calibrate_gate.py --split "$SPLIT" --bundle "$DEFAULT" | tee benchmarks/runtime/gate/calibrate_gate.txt
$PY benchmarks/runtime/fresh_venv.py --model "$DEFAULT"
bash benchmarks/runtime/bench_host.sh "$DEFAULT" "$@"
NAME=shipped THREADS=1,2 bash benchmarks/runtime/bench_host.sh "$DEFAULT"
bash benchmarks/runtime/bench_emulated.sh "$DEFAULT" "$@" || echo "emulated run failed: see above"
