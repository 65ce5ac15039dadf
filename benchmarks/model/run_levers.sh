#!/usr/bin/env bash
# Issue 17: every lever measured by the same 5-fold group CV over all of ../shared/data/knee (the
# non-test groups of one seed-0 split; every split variant below assigns the same groups to the same
# folds), scored out-of-fold per source by benchmarks/model/cv_levers.py.
#
#   bash benchmarks/model/run_levers.sh [lever ...]      (default: every lever below)
#
# Runs go to runs/model/ (git-ignored); a finished fold is skipped, a killed one resumed.
# Written for a 2-core CPU: Lite0 at 224 px, 10 epochs max, 2 frozen warm-up epochs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=".venv/bin/osteo-edge"
PY=".venv/bin/python"
DATA=../shared/data
KNEE="$DATA/knee/multiclass-kaggle $DATA/knee/wani-mendeley $DATA/knee/2class-kaggle"
W=runs/model
COMMON=(--arch efficientnet_lite0 --weights imagenet --img-size 224 --epochs 10 --freeze-epochs 2 --lr 5e-4
        --batch-size 16 --patience 4 --seed 0 --threads 2)

splits() {
  [ -f $W/audit/groups.csv ] || $OE data audit $KNEE --out $W/audit
  for m in one per-source all; do
    [ -f $W/split-$m/split.csv ] || $OE data split $KNEE --groups $W/audit/groups.csv --members $m --folds 5 --out $W/split-$m
  done
}

# lever NAME MEMBERS ARGS...: train 5 folds (resumable), then score them out of fold
lever() {
  local name=$1 members=$2; shift 2
  local t0=$SECONDS
  if [ ! -f $W/$name/cv.json ]; then
    if [ -d $W/$name ]; then R=--resume; else R=; fi
    $OE train --split $W/split-$members/split.csv --out $W/$name --folds 5 $R "${COMMON[@]}" "$@"
  fi
  echo "$name trained in $((SECONDS - t0)) s (0 if it was already done)"
  $PY benchmarks/model/cv_levers.py --lever "$name" --runs $W/$name --eval-split $W/split-per-source/split.csv \
      --note "osteo-edge train --split $W/split-$members/split.csv --folds 5 ${COMMON[*]} $*"
}

splits
LEVERS=("$@")
[ ${#LEVERS[@]} -eq 0 ] && LEVERS=(E0-baseline E1-per-source E2-per-source-cells E3-per-source-cells-acq)
for l in "${LEVERS[@]}"; do
  case $l in
    E0-baseline) lever E0-baseline one --balance weighted ;;                      # today's recipe
    E1-per-source) lever E1-per-source per-source --balance weighted ;;           # lever 4: every source's copy
    E2-per-source-cells) lever E2-per-source-cells per-source --balance cells ;;  # + lever 1: (source, class) cells
    E3-per-source-cells-acq) lever E3-per-source-cells-acq per-source --balance cells --augment acquisition ;;  # + lever 2
    E4-one-cells) lever E4-one-cells one --balance cells ;;                       # lever 1 alone
    E5-per-source-cells-320) lever E5-per-source-cells-320 per-source --balance cells --img-size 320 ;;  # + lever 3: resolution
    E6-per-source-cells-letterbox) lever E6-per-source-cells-letterbox per-source --balance cells --resize letterbox ;;  # + lever 2: framing
    E7-per-source-cells-knee) lever E7-per-source-cells-knee per-source --balance cells --resize knee ;;  # + lever 2/3: one knee per input
    E8-per-source-cells-knee-acq) lever E8-per-source-cells-knee-acq per-source --balance cells --resize knee --augment acquisition ;;
    E9-one-knee) lever E9-one-knee one --balance weighted --resize knee ;;          # today's recipe, knee framing only
    E10-per-source-knee) lever E10-per-source-knee per-source --balance weighted --resize knee ;;  # E1 + knee framing
    E11-per-source-knee-acq) lever E11-per-source-knee-acq per-source --balance weighted --resize knee --augment acquisition ;;
    E12-per-source-knee-cellsel) lever E12-per-source-knee-cellsel per-source --balance weighted --resize knee --select cell-recall ;;
    E13-per-source-tscore) lever E13-per-source-tscore per-source --balance weighted --tscore-aux 0.5 --tscore-csv "$DATA/tabular/wani_patient_details.csv" ;;  # E1 + lever 5
    E14-per-source-320) lever E14-per-source-320 per-source --balance weighted --img-size 320 ;;  # E1 + lever 3: resolution
    E15-per-source-dro) lever E15-per-source-dro per-source --balance weighted --group-dro 0.01 ;;  # E1 + lever 1: group DRO over (source, class) cells
    E15b-per-source-dro-0.1) lever E15b-per-source-dro-0.1 per-source --balance weighted --group-dro 0.1 ;;  # E15 with a 10x step size
    E16-per-source-distill) lever E16-per-source-distill per-source --balance weighted --distill 0.5 \
        --teacher 'runs/model/E0-baseline/fold{fold}' --teacher 'runs/model/E1-per-source/fold{fold}' \
        --teacher 'runs/model/E13-per-source-tscore/fold{fold}' ;;  # E1 + lever 6: fold-matched 3-recipe ensemble (flip TTA) distilled
    E17-per-source-knee-320) lever E17-per-source-knee-320 per-source --balance weighted --resize knee --img-size 320 ;;  # E10 at 320 px
    E19-per-source-384) lever E19-per-source-384 per-source --balance weighted --img-size 384 ;;  # issue 26: E1 at 384 px, the control
    E20-per-source-locator) lever E20-per-source-locator per-source --balance weighted --resize knee_locator ;;  # issue 26: E1 on the learned locator's knee crops
    E21-per-source-locator-cells) lever E21-per-source-locator-cells per-source --balance cells --resize knee_locator ;;  # E20 + (source, class) cells
    E22-per-source-locator-384) lever E22-per-source-locator-384 per-source --balance weighted --resize knee_locator --img-size 384 ;;  # E20 at 384 px
    E23-per-source-locator-384-cells) lever E23-per-source-locator-384-cells per-source --balance cells --resize knee_locator --img-size 384 ;;  # E22 + cells
    *) echo "unknown lever $l" >&2; exit 2 ;;
  esac
done
.venv/bin/python benchmarks/model/cv_levers.py --table
