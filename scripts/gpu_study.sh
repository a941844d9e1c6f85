#!/usr/bin/env bash
# The GPU rows of docs/results.md and docs/data.md, on one NVIDIA GPU with bf16 (about 6 minutes on an H200):
#   1. section 6 of the benchmark on the GPU: ResNet-50 at 224 px trained on streamed JPEGs, against the
#      same model on random tensors already on the GPU;
#   2. contrastive pretraining's GPU recipe (experiment=contrastive_gpu) for the cnn and for ResNet-18,
#      side by side on the one GPU;
#   3. both encoders judged: k-NN on all 60,000 training images beside its two floors, and the protocol's
#      fine-tuning at 10 and 100 labels per class over 10 seeds, paired with the same backbone from scratch.
#
#   PRETEXT_DATA=DIR scripts/gpu_study.sh [OUT]      (default OUT: outputs/gpu_study)
set -uo pipefail  # not -e: a part that fails is reported, and the parts after it still run

OUT=${1:-outputs/gpu_study}
PYTHON=${PYTHON:-python}
MAX_TIME=${MAX_TIME:-00:00:02:40}  # a pretraining run stops here at the latest (Lightning's max_time)
quiet=(trainer.enable_progress_bar=false)
mkdir -p "$OUT"
failed=()
step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  "$@" >"$OUT/$name.log" 2>&1 || failed+=("$name")
  tail -n 4 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PYTHON -c "import torch, lightning; print(f'torch {torch.__version__}, lightning {lightning.__version__}')"

step stream $PYTHON -m scripts.bench --gpu --sections 6 --stream-sizes 30000 --repeats 1 --json "$OUT/stream.json"

echo "== pretraining, both at once (at most $MAX_TIME each)"
$PYTHON -m pretrain experiment=contrastive_gpu "hydra.run.dir=$OUT/cnn" "+trainer.max_time=$MAX_TIME" \
  "${quiet[@]}" >"$OUT/pretrain-cnn.log" 2>&1 &
cnn=$!
$PYTHON -m pretrain experiment=contrastive_gpu backbone=resnet18 trainer.max_epochs=40 "hydra.run.dir=$OUT/resnet18" \
  "+trainer.max_time=$MAX_TIME" "${quiet[@]}" >"$OUT/pretrain-resnet18.log" 2>&1 &
resnet18=$!
wait $cnn || failed+=(pretrain-cnn)
wait $resnet18 || failed+=(pretrain-resnet18)
tail -n 3 "$OUT/pretrain-cnn.log" "$OUT/pretrain-resnet18.log"

echo "== k-NN, and fine-tuning at 10 and 100 labels per class, seeds 0-9 (8 sweeps), all at once"
for arch in cnn resnet18; do
  for pool in mean flatten; do
    $PYTHON -m scripts.knn_eval --backbone $arch --pool $pool --encoder "$OUT/$arch/encoder.safetensors"
  done
done >"$OUT/knn.log" 2>&1 &
knn=$!
mkdir -p "$OUT/protocol"
sweeps=()
for arch in cnn resnet18; do
  for encoder in "$OUT/$arch/encoder.safetensors" none; do
    for seeds in 'range(0,5)' 'range(5,10)'; do
      dir="$OUT/protocol/$arch-$([ "$encoder" = none ] && echo scratch || echo pretrained)-${seeds//[^0-9]/}"
      $PYTHON -m finetune -m experiment=protocol backbone=$arch trainer=gpu "encoder=$encoder" eval=finetune \
        data.labels_per_class=10,100 "seed=$seeds" "hydra.sweep.dir=$dir" "${quiet[@]}" >"$dir.log" 2>&1 &
      sweeps+=($!)
    done
  done
done
for pid in "${sweeps[@]}"; do wait "$pid" || failed+=("protocol sweep $pid"); done
wait $knn || failed+=(knn)
cat "$OUT/knn.log"
for arch in cnn resnet18; do
  step "report-$arch" $PYTHON -m finetune.report "$OUT"/protocol/$arch-*/
done

echo "failed: ${failed[*]:-none}"
