#!/usr/bin/env bash
# Build the shipped default bundle (src/osteo_edge/models/default) from a run made by run.sh, and
# check it against the fp32 training run with the parity gate.
#
#   bash benchmarks/export/make_default.sh [SOURCE_RUN] [FP32_RUN] [WORK]
#
# SOURCE_RUN: the torch run whose int8 TFLite export is shipped (default: the QAT run, the best int8
# TFLite in benchmarks/export/RESULTS.md); FP32_RUN: its fp32 parent (the reference of the gate).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${3:-runs/export-bench}
SRC=${1:-$WORK/qat-run}
REF=${2:-$WORK/knee-lite0}
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
SPLIT=$($PY -c "import json; print(json.load(open('$REF/manifest.json'))['provenance']['split_csv'])")
[ -f "$SPLIT" ] || SPLIT="$WORK/split/split.csv"   # remade (and checksum-verified) by run.sh
# POOL: parity's unlabelled pool options (e.g. "--pool runs/model/audit/groups.csv --pool-members all");
# GATE_SPLIT: the split whose non-test rows fit the input gate (default: SPLIT)
POOL=${POOL:-}
GATE_SPLIT=${GATE_SPLIT:-$SPLIT}
rm -rf src/osteo_edge/models/default.new
$OE export --model "$SRC" --format tflite --int8 --split "$SPLIT" --out src/osteo_edge/models/default.new
rm -rf src/osteo_edge/models/default && mv src/osteo_edge/models/default.new src/osteo_edge/models/default
# exit code 1 here means the shipped model fails a gate: that is reported, not hidden
$OE parity --reference "$REF" --candidate src/osteo_edge/models/default --split "$SPLIT" --threads 2 $POOL \
    --json benchmarks/export/default_parity.json || echo "default bundle: parity gate failed (see default_parity.json)"
# The edge runtime's input gate (out-of-distribution score) is fitted per bundle by the runtime's
# script; a rebuilt bundle has none until this runs (it writes the manifest's "gate" field and reseals):
$PY benchmarks/runtime/calibrate_gate.py --split "$GATE_SPLIT" --crossfit --bundle src/osteo_edge/models/default
du -b src/osteo_edge/models/default/*
