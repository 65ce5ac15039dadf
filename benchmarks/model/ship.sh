#!/usr/bin/env bash
# Rebuild the shipped default bundle (src/osteo_edge/models/default) and its fp32 reference bundle
# (models/default-fp32) from a lever's recipe, with `osteo-edge release` (docs/release.md):
#
#   bash benchmarks/model/ship.sh LEVER MEMBERS [RECIPE]
#   e.g. bash benchmarks/model/ship.sh E1-per-source per-source      (RECIPE: benchmarks/model/recipes/LEVER.yaml)
#
# release: fp32 run on the split-MEMBERS train rows -> QAT -> fp32 TFLite reference + int8 TFLite
# through the faithful route -> input gate (cross-fitted) -> parity of the one against the other on
# every held-out file -> per-source metrics + the lever's CV row into both manifests -> build-machine
# paths stripped -> both signed with the release key (RELEASE_KEY) -> verified against the package's
# public keys. Resumable: run it again after a stop and the finished steps are skipped (runs/ship/steps.log).
# Splits come from run_levers.sh (runs/model/, every variant assigns the same groups to the same folds).
# This script only names the repository's places and copies the release's reports where the docs cite them.
set -euo pipefail
cd "$(dirname "$0")/../.."
LEVER=$1; MEMBERS=$2
RECIPE=${3:-benchmarks/model/recipes/$LEVER.yaml}
OE=${OE:-.venv/bin/osteo-edge}
W=${W:-runs/ship}
KEY=${RELEASE_KEY:-/root/.osteo-edge-release/osteo-edge-release-2026-12.key}
set +e
$OE release --split "runs/model/split-$MEMBERS/split.csv" --eval-split runs/model/split-per-source/split.csv \
    --recipe "$RECIPE" --out "$W" --bundle-dir src/osteo_edge/models/default --reference-dir models/default-fp32 \
    --key "$KEY" --trusted-key src/osteo_edge/keys
rc=$?  # 1 after a complete release: the int8 bundle fails a parity gate (reported, not hidden)
set -e
[ -f "$W/parity.json" ] || exit "$rc"
cp "$W/parity.json" benchmarks/export/default_parity.json
cp "$W/parity.png" benchmarks/export/default_parity.png
[ -d "$W/parity_explain" ] && rm -rf benchmarks/export/default_explain && cp -r "$W/parity_explain" benchmarks/export/default_explain
cp "$W/per_source.json" benchmarks/model/shipped_sources.json
cp "$W/per_source.md" benchmarks/model/shipped_sources.md
cp -r "$W/gate/." benchmarks/runtime/gate/
du -b src/osteo_edge/models/default/* models/default-fp32/*
exit "$rc"
# benchmark separately on a quiet machine: NAME=shipped THREADS=1,2 bash benchmarks/runtime/bench_host.sh
