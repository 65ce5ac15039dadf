#!/usr/bin/env bash
# Issue 28, leave one source out: two base models trained WITHOUT the site's source, each exported to an
# fp32 TFLite bundle with an embedding output (for --head), and the shipped default, each with a site
# from the other source; then benchmarks/site/loso.py (k = 10, 20, 40; 20 draws) -> benchmarks/site/loso/.
# Reuses the audit of run.sh (runs/site/audit). Trains one model at a time (2 threads): about 15 min
# each on a busy 2-core machine; steps whose output exists are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
DATA=../shared/data/knee
W=${W:-runs/site-base}
A=${A:-runs/site/audit}
[ -f $A/groups.csv ] || $OE data audit $DATA/multiclass-kaggle $DATA/wani-mendeley $DATA/2class-kaggle --out $A --no-plots
# the shipped model's split (as run.sh): the shipped default's Wani pool is checked against it
[ -f runs/site/split-per-source/split.csv ] || $OE data split $DATA/multiclass-kaggle $DATA/wani-mendeley $DATA/2class-kaggle \
    --groups $A/groups.csv --members per-source --folds 5 --out runs/site/split-per-source
$PY benchmarks/site/loso_groups.py $A/groups.csv $W
# Kaggle-only base (binary: the Kaggle folders have no Osteopenia), Wani as the site
[ -f $W/split-kaggle-loso/split.csv ] || $OE data split $DATA/2class-kaggle $DATA/multiclass-kaggle --groups $W/groups-kaggle-no-wani-copy.csv \
    --members per-source --binary --out $W/split-kaggle-loso
# Wani-only base, the Kaggle folders as the site
[ -f $W/split-wani-loso/split.csv ] || $OE data split $DATA/wani-mendeley --groups $W/groups-wani.csv --members per-source --out $W/split-wani-loso
TRAIN="--arch efficientnet_lite0 --weights imagenet --img-size 224 --epochs 6 --freeze-epochs 2 --lr 5e-4 --batch-size 16 --patience 3 --threads 2"
for b in kaggle wani; do
    [ -f $W/$b-base/manifest.json ] || $OE train --split $W/split-$b-loso/split.csv --out $W/$b-base $TRAIN
    [ -f $W/$b-base-emb/manifest.json ] || $OE export --model $W/$b-base --format tflite --embedding-output \
        --split $W/split-$b-loso/split.csv --out $W/$b-base-emb --threads 2
done
# the shipped model with a head: its torch parent (the QAT run the shipped int8 bundle was exported from,
# seal 291e3ced...; not in the repository) exported to fp32 TFLite with an embedding output, when present
SHIP=${SHIP:-runs/ship/qat-run}
CASES=(--case "Kaggle-only base, Wani site=$W/kaggle-base-emb:$W/split-kaggle-loso/split.csv:wani"
       --case "Wani-only base, Kaggle site=$W/wani-base-emb:$W/split-wani-loso/split.csv:kaggle"
       --case "shipped default, Wani site=default:runs/site/split-per-source/split.csv:wani")
if [ -f $SHIP/manifest.json ]; then
    [ -f $W/shipped-emb/manifest.json ] || $OE export --model $SHIP --format tflite --embedding-output \
        --split runs/site/split-per-source/split.csv --out $W/shipped-emb --threads 2
    CASES+=(--case "shipped model fp32 + embedding, Wani site=$W/shipped-emb:runs/site/split-per-source/split.csv:wani")
fi
$PY benchmarks/site/loso.py --groups $A/groups.csv "${CASES[@]}" "$@"
