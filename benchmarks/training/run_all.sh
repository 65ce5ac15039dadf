#!/usr/bin/env bash
# Reproduce benchmarks/training: the real training runs, their evaluation and comparison.
#
#   bash benchmarks/training/run_all.sh [stage ...]     stages: splits knee knee-eval compare cv region members cv-r18 summary (default: all)
#
# Runs go to runs/ (git-ignored); the committed outputs are copied to benchmarks/training/results/.
# A finished run (manifest.json present) is skipped, a killed one is resumed (--resume), so the
# script can be re-run after an interruption. Written for a 2-core CPU machine: image sizes, epochs and
# one member per duplicate group were chosen so that every run finishes in well under an hour there.
set -euo pipefail
cd "$(dirname "$0")/../.."
OE="nice -n 10 .venv/bin/osteo-edge"
DATA=../shared/data
KNEE="$DATA/knee/multiclass-kaggle $DATA/knee/wani-mendeley $DATA/knee/2class-kaggle"
SPLIT=runs/splits/knee-one/split.csv
RES=benchmarks/training/results
META=(--metadata "$DATA/tabular/wani_patient_details.csv" --key "Patient Id" --subgroups age,sex)
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(splits knee knee-eval compare cv region members cv-r18 summary)
want() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

# train RUN_DIR ARGS...: skip when sealed, resume when killed, else start
train() {
  local out=$1; shift
  if [ -f "$out/manifest.json" ]; then echo "skip $out (done)"; return; fi
  if [ -f "$out/last.pt" ]; then $OE train --out "$out" --resume; else $OE train --out "$out" "$@"; fi
}

# copy a run's small outputs (history, curves, evaluation) into results/
keep() {
  local run=$1 dest=$RES/$2
  mkdir -p "$dest"
  cp "$run/history.csv" "$run/curves.png" "$run/config.yaml" "$dest/"
  for f in metrics.json report.md confusion.png roc.png reliability.png; do cp "$run/eval/test/$f" "$dest/test_$f"; done
}

if want splits; then
  # 3 classes, conflicting-label groups dropped, one file per duplicate group, 5 folds over train+val
  $OE data split $KNEE --members one --folds 5 --out runs/splits/knee-one
  $OE data split $KNEE --folds 5 --out runs/splits/knee-all   # same groups in the same splits, every file
  $OE data split $KNEE $DATA/spine/sriher --members one --out runs/splits/knee-spine-one
  .venv/bin/python benchmarks/training/region_splits.py runs/splits/knee-spine-one runs/splits/region
fi

if want knee; then
  # ImageNet-pretrained Lite0 (offline weights): 2 frozen warm-up epochs, then fine-tuning
  train runs/knee-lite0 --split $SPLIT --arch efficientnet_lite0 --weights imagenet --img-size 224 \
    --epochs 10 --freeze-epochs 2 --lr 5e-4 --batch-size 16 --patience 4 --seed 0
  # from scratch: no ImageNet weights for these offline
  train runs/knee-cnn --split $SPLIT --arch cnn --weights none --img-size 224 --epochs 20 --lr 2e-3 --batch-size 16 --patience 6 --seed 0 --threads 1
  train runs/knee-resnet18-scratch --split $SPLIT --arch resnet18 --weights none --img-size 224 --epochs 15 --lr 1e-3 --batch-size 16 --patience 5 --seed 0 --threads 1
  train runs/knee-b0-scratch --split $SPLIT --arch efficientnet_b0 --weights none --img-size 224 --epochs 15 --lr 1e-3 --batch-size 16 --patience 5 --seed 0 --threads 1
fi

if want knee-eval; then
  for r in knee-lite0 knee-cnn knee-resnet18-scratch knee-b0-scratch; do
    # headline: the training split's test rows (one file per distinct radiograph)
    $OE evaluate --model runs/$r --split $SPLIT "${META[@]}"
    # the same test groups with every file of each group (members all: same group->split assignment),
    # so Wani's own copies of Normal/Osteoporosis knees are scored too (bootstrap over groups)
    $OE evaluate --model runs/$r --split runs/splits/knee-all/split.csv --out runs/$r/eval/test-all-members "${META[@]}"
    keep runs/$r $r
    cp runs/$r/eval/test-all-members/metrics.json $RES/$r/test-all-members_metrics.json
    cp runs/$r/eval/test-all-members/report.md $RES/$r/test-all-members_report.md
  done
fi

if want compare; then
  $OE compare runs/knee-lite0 runs/knee-b0-scratch runs/knee-resnet18-scratch runs/knee-cnn --out $RES/compare --threads 1
fi

# cv5 NAME ARGS...: 5-fold CV (resumable), every fold's model evaluated on the held-out test split
cv5() {
  local name=$1; shift
  if [ ! -f runs/$name/cv.json ]; then
    if [ -d runs/$name ]; then R=--resume; else R=; fi
    $OE train --split $SPLIT --out runs/$name --folds 5 $R "$@"
  fi
  $OE evaluate --model runs/$name --folds 5 --split $SPLIT
  mkdir -p $RES/$name
  cp runs/$name/cv.json runs/$name/eval/test/cv_metrics.json runs/$name/eval/test/cv_report.md $RES/$name/
}

if want cv; then
  # 5-fold CV of Lite0 with the settings of runs/knee-lite0
  cv5 knee-lite0-cv5 --arch efficientnet_lite0 --weights imagenet --img-size 224 --epochs 10 --freeze-epochs 2 \
    --lr 5e-4 --batch-size 16 --patience 4 --seed 0 --threads 1
fi

if want region; then
  # one model for knee + spine vs one model per region, same images, same test rows (Lite0, 160 px)
  for r in joint knee spine; do
    s=runs/splits/region/$r/split.csv; [ $r = joint ] && s=runs/splits/knee-spine-one/split.csv
    train runs/region-$r-lite0 --split $s --arch efficientnet_lite0 --weights imagenet --img-size 160 \
      --epochs 8 --freeze-epochs 2 --lr 5e-4 --batch-size 16 --patience 4 --seed 0 --threads 1
    $OE evaluate --model runs/region-$r-lite0 --split $s
    mkdir -p $RES/region/$r
    cp runs/region-$r-lite0/eval/test/{metrics.json,report.md,predictions.csv} runs/region-$r-lite0/history.csv $RES/region/$r/
  done
fi

if want members; then
  # Does training on every copy of each radiograph (members all) help on Wani? The Wani copies of
  # Normal/Osteoporosis knees only exist as non-representative members: with --members one the model
  # never sees a Wani-style Normal or Osteoporosis knee. Same groups in the same splits as knee-one.
  train runs/knee-lite0-allmembers --split runs/splits/knee-all/split.csv --arch efficientnet_lite0 --weights imagenet \
    --img-size 224 --epochs 6 --freeze-epochs 1 --lr 5e-4 --batch-size 16 --patience 3 --seed 0 --threads 1
  $OE evaluate --model runs/knee-lite0-allmembers --split runs/splits/knee-all/split.csv --out runs/knee-lite0-allmembers/eval/test-all-members "${META[@]}"
  $OE evaluate --model runs/knee-lite0-allmembers --split $SPLIT "${META[@]}"
  keep runs/knee-lite0-allmembers knee-lite0-allmembers
  cp runs/knee-lite0-allmembers/eval/test-all-members/metrics.json $RES/knee-lite0-allmembers/test-all-members_metrics.json
fi

if want cv-r18; then
  # ResNet-18 from scratch scored as well as Lite0 on the test split (overlapping CIs): CV it too
  cv5 knee-resnet18-cv5 --arch resnet18 --weights none --img-size 224 --epochs 15 --lr 1e-3 --batch-size 16 \
    --patience 5 --seed 0 --threads 1
fi

if want summary; then
  .venv/bin/python benchmarks/training/summarize.py $RES
fi
