#!/usr/bin/env bash
# Issues 17 and 13: rebuild the shipped default bundle (src/osteo_edge/models/default) from the chosen
# recipe through the existing pipeline, and record every number the README and the manifest state:
#
#   bash benchmarks/model/ship.sh LEVER MEMBERS [TRAIN OPTIONS...]
#   e.g. bash benchmarks/model/ship.sh E7-per-source-cells-knee per-source --balance cells --resize knee
#
# 1. fp32 run on the split's train rows (val rows select the epoch and calibrate T and the low-BMD
#    threshold), the same options as the lever's CV folds; 2. benchmarks/export/make_default.sh: the fp32
#    TFLite reference bundle (models/default-fp32) and the int8 default through the faithful route, the
#    input gate (cross-fitted), parity of the one against the other on every held-out file; 3. per-source
#    metrics + the lever's CV row into both manifests; 4. build-machine paths stripped; 5. both signed
#    with the release key (RELEASE_KEY).
# Splits come from run_levers.sh (runs/model/, every variant assigns the same groups to the same folds).
set -euo pipefail
cd "$(dirname "$0")/../.."
LEVER=$1; MEMBERS=$2; shift 2
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
W=${W:-runs/ship}
SPLIT=runs/model/split-$MEMBERS/split.csv
EVAL=runs/model/split-per-source/split.csv
KEY=${RELEASE_KEY:-/root/.osteo-edge-release/osteo-edge-release-2026-12.key}
DEFAULT=src/osteo_edge/models/default
mkdir -p "$W"
LOG="$W/steps.log"
step() { echo "+ $*" | tee -a "$LOG"; local t0=$SECONDS; "$@" 2>&1 | tee -a "$LOG"; echo "  ($((SECONDS - t0)) s)" | tee -a "$LOG"; }

[ -f "$W/fp32/manifest.json" ] || step $OE train --split "$SPLIT" --out "$W/fp32" --arch efficientnet_lite0 --weights imagenet \
    --img-size 224 --epochs 10 --freeze-epochs 2 --lr 5e-4 --batch-size 16 --patience 4 --seed 0 --threads 2 "$@"
# The int8 route (issue 22): QAT (NNCF, 3 epochs at 1e-5; temperature and low-BMD threshold refitted
# on validation), then the faithful route of `osteo-edge export` (gray stem fold, the fewest worst
# layers kept float within the fidelity budget). The QAT run is the float model the int8 file is
# faithful to: make_default.sh writes it as the fp32 reference bundle models/default-fp32 and checks
# the one against the other (PTQ of the pre-QAT run could not meet the p95 gate: docs/export.md).
[ -f "$W/qat-run/manifest.json" ] || step $OE quantize --int8 --method qat --model "$W/fp32" --split "$SPLIT" --out "$W/qat-run" \
    --epochs 3 --lr 1e-5 --threads 2
step bash benchmarks/export/make_default.sh "$W/qat-run"
for B in models/default-fp32 "$DEFAULT"; do  # the default last: its per-source report is the one kept in benchmarks/model/
  step $PY benchmarks/model/shipped_sources.py --bundle "$B" --split "$EVAL" --lever "$LEVER" \
      $( [ "$B" = "$DEFAULT" ] && echo --parity benchmarks/export/default_parity.json ) --write-manifest
  PYTHONPATH=src step $PY benchmarks/export/strip_build_paths.py "$B"
  step $OE sign "$B" --key "$KEY"
  step $OE verify "$B" --trusted-key src/osteo_edge/keys
done
# benchmark separately on a quiet machine: NAME=shipped THREADS=1,2 bash benchmarks/runtime/bench_host.sh
