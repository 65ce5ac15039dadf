#!/usr/bin/env bash
# Issue 22: the shipped default (src/osteo_edge/models/default) rebuilt as weight-only int8 from the kept
# QAT run (runs/ship/qat-run, whose fp32 TFLite is models/default-fp32), by the steps of `osteo-edge
# release` run one by one: release re-runs QAT, and QAT is not deterministic on CPU (a fresh run of the same
# recipe differed by up to 0.061 in a weight and gave temperature 1.279 instead of 1.315), so the release
# would also have replaced the reference bundle. `bash benchmarks/model/ship.sh E1-per-source per-source`
# is the whole recipe from scratch (benchmarks/model/recipes/E1-per-source.yaml: weights_only: true).
#
#   bash benchmarks/export/ship_from_qat.sh            (RELEASE_KEY: the publisher's private key)
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=${OE:-.venv/bin/osteo-edge}; PY=${PY:-.venv/bin/python}
KEY=${RELEASE_KEY:-/root/.osteo-edge-release/osteo-edge-release-2026-12.key}
SPLIT=runs/model/split-per-source/split.csv
D=src/osteo_edge/models/default
rm -rf $D
$OE export --model runs/ship/qat-run --format tflite --int8 --weights-only --split $SPLIT --out $D --threads 2
$OE gate calibrate --split $SPLIT --crossfit --non-knee ../shared/data/spine/sriher --bundle $D --out runs/ship22/gate
# exit 1 here would mean a failed parity gate: reported in the JSON, not hidden
$OE parity --reference models/default-fp32 --candidate $D --split $SPLIT --threads 2 --pool runs/model/audit/groups.csv \
   --pool-members all --json benchmarks/export/default_parity.json --explain benchmarks/export/default_explain || true
$PY benchmarks/model/shipped_sources.py --split $SPLIT --bundle $D --lever E1-per-source --parity benchmarks/export/default_parity.json --write-manifest
PYTHONPATH=src $PY benchmarks/export/strip_build_paths.py $D
$OE sign $D --key "$KEY"
$OE verify $D --trusted-key src/osteo_edge/keys
