#!/usr/bin/env bash
# Build the shipped default bundle (src/osteo_edge/models/default) and its fp32 reference bundle
# (models/default-fp32, at the repository root) from one fp32 training run, and check the one against
# the other with the parity gate (issue 22: the faithful int8 route).
#
#   bash benchmarks/export/make_default.sh FP32_RUN [WORK]
#
# 1. models/default-fp32: the run as an fp32 TFLite bundle (the float graph; its own temperature and
#    thresholds are the run's, fitted on validation: the TFLite file matches torch to ~1e-5).
# 2. src/osteo_edge/models/default: int8 TFLite through the faithful route: the gray input folded into
#    the stem (one input channel), the fewest worst layers kept float within the fidelity budget
#    (export's defaults: p95 |dp| <= 0.04, max <= 0.12 on the split's val rows).
# 3. the input gate (cross-fitted) fitted and written into both bundles;
# 4. parity of the default against models/default-fp32 on every held-out file (torch-free), with
#    --explain: benchmarks/export/default_parity.json and benchmarks/export/default_explain/.
# Then ship.sh writes the per-source metrics, strips build paths and signs both bundles.
set -euo pipefail
cd "$(dirname "$0")/../.."
REF=${1:?FP32_RUN}
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
SPLIT=${SPLIT:-runs/model/split-per-source/split.csv}
POOL=${POOL:-"--pool runs/model/audit/groups.csv --pool-members all"}
GATE_SPLIT=${GATE_SPLIT:-$SPLIT}
BUDGET=${BUDGET:-}   # e.g. "--max-p95-dp 0.02" to keep more layers float
DEFAULT=src/osteo_edge/models/default
FP32=models/default-fp32
rm -rf "$DEFAULT.new" "$FP32.new"
mkdir -p models
$OE export --model "$REF" --format tflite --split "$SPLIT" --out "$FP32.new" --threads 2
$OE export --model "$REF" --format tflite --int8 --split "$SPLIT" --out "$DEFAULT.new" --threads 2 $BUDGET
$PY benchmarks/runtime/calibrate_gate.py --split "$GATE_SPLIT" --crossfit --bundle "$FP32.new" --bundle "$DEFAULT.new"
rm -rf "$DEFAULT" "$FP32" && mv "$DEFAULT.new" "$DEFAULT" && mv "$FP32.new" "$FP32"
# exit code 1 here means the shipped model fails a gate: that is reported, not hidden
$OE parity --reference "$FP32" --candidate "$DEFAULT" --split "$SPLIT" --threads 2 $POOL \
    --json benchmarks/export/default_parity.json --explain benchmarks/export/default_explain \
    || echo "default bundle: parity gate failed (see default_parity.json)"
du -b "$DEFAULT"/* "$FP32"/*
