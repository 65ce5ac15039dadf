#!/usr/bin/env bash
# Reproduce benchmarks/tabular/: clinical risk models on the two public tables, the leakage-guard
# refusal, bias reports and (when an image model's predictions.csv is given) image+clinical fusion.
#
#   bash benchmarks/tabular/run.sh                       # tabular runs + bias (fusion skipped)
#   IMAGE_PREDICTIONS="runs/knee-lite0/eval/val/predictions.csv runs/knee-lite0/eval/test/predictions.csv" \
#     IMAGE_RUN=runs/knee-lite0 bash benchmarks/tabular/run.sh   # also the image bias cohort and fusion
#
# Model runs (with the fitted .skops models) go to runs/tabular/ (not committed); the reports,
# tables and PNGs are copied under benchmarks/tabular/. Single-threaded on purpose (--jobs 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/tabular}
WORK=${WORK:-runs/tabular}
OUT=benchmarks/tabular
IMAGE_PREDICTIONS=${IMAGE_PREDICTIONS:-}
IMAGE_RUN=${IMAGE_RUN:-}
DUPLICATES=${DUPLICATES:-}   # a split.csv with --members all over the image run's sources (see docs/tabular.md)
IMG_BIAS=(); IMG_FUSE=()
for p in $IMAGE_PREDICTIONS; do IMG_BIAS+=(--image-predictions "$p"); IMG_FUSE+=(--predictions "$p"); done
if [ -n "$DUPLICATES" ]; then IMG_BIAS+=(--duplicates "$DUPLICATES"); IMG_FUSE+=(--duplicates "$DUPLICATES"); fi
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

# 4. bias: tabular models (out-of-fold), and the image model on held-out Wani images when given
run $OE tabular bias --run "$WORK/lifestyle" --csv "$DATA/lifestyle_osteoporosis.csv" --out "$WORK/bias-lifestyle"
keep "$WORK/bias-lifestyle" bias-lifestyle
if [ -n "$IMAGE_PREDICTIONS" ]; then
  run $OE tabular bias --run "$WORK/wani-smote" --csv "$DATA/wani_patient_details.csv" \
    "${IMG_BIAS[@]}" --clinical "$DATA/wani_patient_details.csv" --out "$WORK/bias-wani"
else
  run $OE tabular bias --run "$WORK/wani-smote" --csv "$DATA/wani_patient_details.csv" --out "$WORK/bias-wani"
fi
keep "$WORK/bias-wani" bias-wani

# 5. image + clinical late fusion (Wani patients in the image model's val/test splits)
if [ -n "$IMAGE_PREDICTIONS" ]; then
  for est in xgboost logreg; do
    run $OE tabular fuse --run "$WORK/wani-smote" --estimator $est "${IMG_FUSE[@]}" \
      --out "$WORK/fusion-$est"
    keep "$WORK/fusion-$est" "fusion-$est"
  done
  echo "image predictions: $IMAGE_PREDICTIONS (run: ${IMAGE_RUN:-?})" > "$OUT/image_source.txt"
  [ -n "$IMAGE_RUN" ] && [ -f "$IMAGE_RUN/manifest.json" ] && \
    $PY -c "import json,sys; m=json.load(open('$IMAGE_RUN/manifest.json')); print('image run arch:', m.get('arch')); print('protocol:', m.get('provenance',{}).get('protocol'))" >> "$OUT/image_source.txt"
else
  echo "fusion skipped: set IMAGE_PREDICTIONS to an 'osteo-edge evaluate' predictions.csv" | tee -a "$LOG"
fi
$PY benchmarks/tabular/describe_data.py "$DATA"
$PY benchmarks/tabular/summarize.py
echo "done; see $OUT/"
