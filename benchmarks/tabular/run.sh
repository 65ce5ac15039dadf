#!/usr/bin/env bash
# Reproduce benchmarks/tabular/: clinical risk models on the two public tables, the leakage-guard
# refusal, bias reports and (when an image run is given) image+clinical late fusion.
#
#   bash benchmarks/tabular/run.sh                               # tabular runs + bias (fusion skipped)
#   IMAGE_RUN=runs/knee-lite0 bash benchmarks/tabular/run.sh     # also the image bias cohort and fusion
#
# With IMAGE_RUN, the image run is COPIED to runs/tabular/image-run (the original bundle is never
# modified: 'evaluate' reseals the run it evaluates), evaluated on its val and test subsets, and a
# '--members all' split of the three knee sources is made so that held-out copies of Wani knees that
# the run's split represents by another source's file are mapped back to their patients.
# Model runs (with the fitted .skops models) go to runs/tabular/ (not committed); the reports,
# tables and PNGs are copied under benchmarks/tabular/. Single-threaded on purpose (--jobs 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/tabular}
KNEE=${KNEE:-../shared/data/knee}
WORK=${WORK:-runs/tabular}
OUT=benchmarks/tabular
IMAGE_RUN=${IMAGE_RUN:-}
mkdir -p "$WORK" "$OUT"
LOG="$OUT/commands.log"
: > "$LOG"

run() {  # run a command, log it with its wall time and exit status
  echo "\$ $(printf '%q ' "$@")" | tee -a "$LOG"
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  nice -n 10 "$@" >> "$LOG" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  printf '(exit %s, %.1f s wall)\n\n' "$rc" "$(echo "$t1 - $t0" | bc)" | tee -a "$LOG"
  return 0
}

keep() {  # copy a run's reports (not its models) into benchmarks/tabular/<name>/
  local src=$1 name=$2
  rm -rf "${OUT:?}/$name"; mkdir -p "$OUT/$name"
  for f in report.md metrics.csv leakage.csv importance.csv tabular.json roc.png importance.png \
           bias.csv fusion_metrics.csv fusion_predictions.csv fusion.png fusion_roc.png; do
    [ -f "$src/$f" ] && cp "$src/$f" "$OUT/$name/"
  done
  cp "$src"/bias_*.png "$OUT/$name/" 2>/dev/null || true
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores visible, shared with other jobs)"
  echo "arch: $(uname -m); kernel $(uname -r)"
  echo "git: $(git rev-parse --short HEAD)"
  $PY - <<'EOF'
import platform
from importlib import metadata
print("python:", platform.python_version())
for p in ("scikit-learn", "imbalanced-learn", "xgboost", "pandas", "numpy", "skops"):
    print(f"{p}: {metadata.version(p)}")
EOF
} > "$OUT/machine.txt"

# 1. the leakage guard on the Wani table: T-score / Z-score (and the ids) must be refused
CMD=($OE tabular train --csv "$DATA/wani_patient_details.csv" --target Diagnosis --id-col "Patient Id" --drop "S.No" --out "$WORK/wani-refused")
{ echo "\$ $(printf '%q ' "${CMD[@]}")"; rc=0; "${CMD[@]}" 2>&1 || rc=$?; echo "(exit $rc)"; } > "$OUT/leakage_refusal.txt"
cat "$OUT/leakage_refusal.txt" | tee -a "$LOG"

# 2. lifestyle table (binary, balanced, probably synthetic): no resampling needed
run $OE tabular train --csv "$DATA/lifestyle_osteoporosis.csv" --target Osteoporosis --id-col Id \
  --out "$WORK/lifestyle" --jobs 1
keep "$WORK/lifestyle" lifestyle

# 3. Wani clinical table, diagnosis without T-score / Z-score, with and without SMOTE
run $OE tabular train --csv "$DATA/wani_patient_details.csv" --target Diagnosis --id-col "Patient Id" \
  --drop "S.No,T-score Value,Z-Score Value" --smote --out "$WORK/wani-smote" --jobs 1
keep "$WORK/wani-smote" wani-smote
run $OE tabular train --csv "$DATA/wani_patient_details.csv" --target Diagnosis --id-col "Patient Id" \
  --drop "S.No,T-score Value,Z-Score Value" --no-smote --out "$WORK/wani-nosmote" --jobs 1
keep "$WORK/wani-nosmote" wani-nosmote

# 4. the image model's held-out predictions (val + test) on a copy of the image run
IMG_BIAS=(); IMG_FUSE=()
if [ -n "$IMAGE_RUN" ]; then
  rm -rf "$WORK/image-run"; cp -r "$IMAGE_RUN" "$WORK/image-run"
  for sub in val test; do
    run $OE evaluate --model "$WORK/image-run" --subset $sub --out "$WORK/image-run/eval/$sub" --threads 2
    IMG_BIAS+=(--image-predictions "$WORK/image-run/eval/$sub/predictions.csv")
    IMG_FUSE+=(--predictions "$WORK/image-run/eval/$sub/predictions.csv")
  done
  run $OE data split "$KNEE/multiclass-kaggle" "$KNEE/wani-mendeley" "$KNEE/2class-kaggle" --members all \
    --out "$WORK/split-all"
  IMG_BIAS+=(--duplicates "$WORK/split-all/split.csv"); IMG_FUSE+=(--duplicates "$WORK/split-all/split.csv")
  {
    echo "image run: $IMAGE_RUN (copied to $WORK/image-run; manifest sha256 $(sha256sum "$IMAGE_RUN/manifest.json" | cut -c1-16)...)"
    $PY -c "import json; m=json.load(open('$IMAGE_RUN/manifest.json')); print('arch:', m.get('arch')); print('split protocol:', m.get('provenance',{}).get('protocol')); print('split file:', m.get('provenance',{}).get('split_csv'))"
  } > "$OUT/image_source.txt"
fi

# 5. bias: tabular models (out-of-fold), and the image model on held-out Wani images when given
run $OE tabular bias --run "$WORK/lifestyle" --csv "$DATA/lifestyle_osteoporosis.csv" --out "$WORK/bias-lifestyle"
keep "$WORK/bias-lifestyle" bias-lifestyle
if [ -n "$IMAGE_RUN" ]; then
  run $OE tabular bias --run "$WORK/wani-smote" --csv "$DATA/wani_patient_details.csv" \
    "${IMG_BIAS[@]}" --clinical "$DATA/wani_patient_details.csv" --out "$WORK/bias-wani"
else
  run $OE tabular bias --run "$WORK/wani-smote" --csv "$DATA/wani_patient_details.csv" --out "$WORK/bias-wani"
fi
keep "$WORK/bias-wani" bias-wani

# 6. image + clinical late fusion (Wani patients in the image model's val/test splits). Primary: the
# no-SMOTE run (its probabilities keep the real class balance); the SMOTE run as a sensitivity check.
# Clinical model: each run's default (highest out-of-fold ROC-AUC), fixed before fusion.
if [ -n "$IMAGE_RUN" ]; then
  for r in nosmote smote; do
    run $OE tabular fuse --run "$WORK/wani-$r" "${IMG_FUSE[@]}" --out "$WORK/fusion-$r"
    keep "$WORK/fusion-$r" "fusion-$r"
  done
else
  rm -rf "$OUT"/fusion-* "$OUT/image_source.txt"
  echo "fusion skipped: set IMAGE_RUN to an image training run (see the header)" | tee -a "$LOG"
fi
$PY benchmarks/tabular/describe_data.py "$DATA"
$PY benchmarks/tabular/summarize.py
echo "done; see $OUT/"
