#!/usr/bin/env bash
# Reproduce benchmarks/export: every export/compression variant of one trained run, scored on its
# real test split (parity: reference through torch, candidates through the edge runtime) and timed
# in ONE benchmark run (osteo-edge bench, batch 1, 2 threads).
#
#   bash benchmarks/export/run.sh [RUN] [WORK]
#
# RUN  : the fp32 training run (default runs/knee-lite0); its manifest names the split it was trained on.
# WORK : where the bundles go (default runs/export-bench; not committed). Results land in
#        benchmarks/export/{parity.json,parity.png,bench.json,bench.png,steps.log} and RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/knee-lite0}
WORK=${2:-runs/export-bench}
OUT=benchmarks/export
EXTRA_PARITY=${EXTRA_PARITY:-}   # parity JSONs of variants added after the bench run (rows without latency)
OE=${OE:-.venv/bin/osteo-edge}
PY=${PY:-.venv/bin/python}
export NNCF_EXTENSION_LOAD_TIMEOUT=${NNCF_EXTENSION_LOAD_TIMEOUT:-600}
mkdir -p "$WORK" "$OUT"
LOG="$OUT/steps.log"
: >> "$LOG"

# The split the run was trained on (its sha256 is in the manifest). If the file is gone, remake it:
# the split is deterministic for the same data, options and seed, and the checksum proves it.
SPLIT=$($PY -c "import json,sys; print(json.load(open('$RUN/manifest.json'))['provenance']['split_csv'])")
WANT=$($PY -c "import json,sys; print(json.load(open('$RUN/manifest.json'))['provenance'].get('split_sha256',''))")
if [ ! -f "$SPLIT" ]; then
  SPLIT="$WORK/split/split.csv"
  $OE data split ../shared/data/knee/multiclass-kaggle ../shared/data/knee/wani-mendeley ../shared/data/knee/2class-kaggle \
      --members one --folds 5 --out "$WORK/split" >> "$LOG" 2>&1
fi
GOT=$(sha256sum "$SPLIT" | cut -d' ' -f1)
if [ -n "$WANT" ] && [ "$WANT" != "$GOT" ]; then echo "split $SPLIT sha256 $GOT != run's $WANT" >&2; exit 1; fi
echo "run=$RUN split=$SPLIT sha256=$GOT" | tee -a "$LOG"

step() { echo "+ $*" | tee -a "$LOG"; local t0=$SECONDS; "$@" >> "$LOG" 2>&1; echo "  ($((SECONDS - t0)) s)" | tee -a "$LOG"; }
# resumable: a step whose --out bundle already verifies is skipped (delete it to redo)
out_of() { local prev=""; for a in "$@"; do [ "$prev" = "--out" ] && echo "$a"; prev=$a; done; }
build_step() { local o; o=$(out_of "$@"); if [ -n "$o" ] && $PY -c "from osteo_edge.artifact import load_bundle; load_bundle('$o')" 2>/dev/null; then echo "= $o exists, skipped" | tee -a "$LOG"; else step "$@"; fi; }

# fp32 exports and post-training int8 (calibration: 128 training images)
build_step $OE export --model "$RUN" --format onnx   --split "$SPLIT" --out "$WORK/onnx-fp32"
build_step $OE export --model "$RUN" --format onnx   --int8 --split "$SPLIT" --out "$WORK/onnx-int8-ptq"
build_step $OE export --model "$RUN" --format tflite --split "$SPLIT" --out "$WORK/tflite-fp32"
build_step $OE export --model "$RUN" --format tflite --int8 --split "$SPLIT" --out "$WORK/tflite-int8-ptq"
# QAT with NNCF, then the tuned weights through the same int8 quantizers
build_step $OE quantize --int8 --method qat --model "$RUN" --split "$SPLIT" --out "$WORK/qat-run" --epochs ${QAT_EPOCHS:-3} --lr 1e-5 --threads 2
build_step $OE export --model "$WORK/qat-run" --format onnx   --int8 --split "$SPLIT" --out "$WORK/onnx-int8-qat"
build_step $OE export --model "$WORK/qat-run" --format tflite --int8 --split "$SPLIT" --out "$WORK/tflite-int8-qat"
# QAT that distils the fp32 outputs (aims at agreement with fp32 rather than a new optimum)
build_step $OE quantize --int8 --method qat --model "$RUN" --split "$SPLIT" --out "$WORK/qat-kd-run" --epochs 2 --lr 1e-5 --distill 1.0 --calib-size 128 --threads 2
build_step $OE export --model "$WORK/qat-kd-run" --format tflite --int8 --split "$SPLIT" --out "$WORK/tflite-int8-qat-kd"
# structured pruning (30% of channels), fine-tuned, then fp32 and int8 TFLite
build_step $OE prune --model "$RUN" --ratio 0.3 --split "$SPLIT" --out "$WORK/pruned30-run" --finetune-epochs ${PRUNE_EPOCHS:-4} --lr 3e-4 --threads 2
build_step $OE export --model "$WORK/pruned30-run" --format tflite --split "$SPLIT" --out "$WORK/pruned30-tflite-fp32"
build_step $OE export --model "$WORK/pruned30-run" --format tflite --int8 --split "$SPLIT" --out "$WORK/pruned30-tflite-int8"
build_step $OE export --model "$WORK/pruned30-run" --format onnx --split "$SPLIT" --out "$WORK/pruned30-onnx-fp32"

CANDS=(onnx-fp32 onnx-int8-ptq onnx-int8-qat tflite-fp32 tflite-int8-ptq tflite-int8-qat tflite-int8-qat-kd qat-run qat-kd-run pruned30-run pruned30-onnx-fp32 pruned30-tflite-fp32 pruned30-tflite-int8)
PARGS=(); for c in "${CANDS[@]}"; do PARGS+=(--candidate "$WORK/$c"); done
# parity exits 1 when a candidate fails a gate: that is a result, not an error of this script
step $OE parity --reference "$RUN" "${PARGS[@]}" --split "$SPLIT" --threads 2 --json "$OUT/parity.json" || true
BARGS=(); for c in "${CANDS[@]}"; do case $c in *-run) ;; *) BARGS+=(--model "$WORK/$c");; esac; done
step $OE bench "${BARGS[@]}" --threads 2 --runs ${BENCH_RUNS:-100} --json "$OUT/bench.json"
step $PY benchmarks/export/make_table.py "$OUT/parity.json" "$OUT/bench.json" "$WORK" "$OUT/RESULTS.md" $EXTRA_PARITY
