#!/usr/bin/env bash
# Issue 28: site validation and calibration, leave one source out, with the SHIPPED default bundle and
# Wani as the site. Rebuilds the shipped model's split (the audit + per-source split of
# benchmarks/model/run_levers.sh, seed 0; the script checks that the bundle reproduces its manifest's
# test accuracy on it) into runs/site/ (git-ignored), then runs loso_wani.py. No training; about 1 min
# on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
DATA=../shared/data
KNEE="$DATA/knee/multiclass-kaggle $DATA/knee/wani-mendeley $DATA/knee/2class-kaggle"
W=${W:-runs/site}
[ -f $W/audit/groups.csv ] || $OE data audit $KNEE --out $W/audit --no-plots
[ -f $W/split-per-source/split.csv ] || $OE data split $KNEE --groups $W/audit/groups.csv --members per-source --folds 5 --out $W/split-per-source
$PY benchmarks/site/loso_wani.py --split $W/split-per-source/split.csv --groups $W/audit/groups.csv "$@"
