#!/usr/bin/env bash
# Géron's Fashion-MNIST transfer study (Hands-On Machine Learning, chapter 11) end to end, then its report:
#   1. pretrain Géron's MLP on the 8 classes other than sandal and shirt: "model A"
#      (task=supervised) and an encoder for every other task in TASKS (experiment=fashion_pretrain);
#   2. fine-tune on 200 labeled sandal/shirt images with each encoder and from scratch, one
#      run per seed in SEEDS (experiment=fashion_transfer);
#   3. python -m finetune.report over the fine-tuning runs: OUT/report.md, .csv, .png.
#
#   scripts/fashion_study.sh [OUT]      (default OUT: outputs/fashion_study/DATE_TIME)
#
# Environment: TASKS (comma-separated pretext tasks, default supervised,autoencoder), SEEDS
# (a Hydra sweep, default range(10)), PRETRAIN_ARGS / FINETUNE_ARGS (more overrides, e.g.
# FINETUNE_ARGS="trainer=gpu"), PYTHON (default python). Data: PRETEXT_DATA, as everywhere.
# A failed run does not stop the study: the report names it, and the script then exits 1.
set -euo pipefail

OUT=${1:-outputs/fashion_study/$(date +%Y-%m-%d_%H-%M-%S)}
TASKS=${TASKS:-supervised,autoencoder}
SEEDS=${SEEDS:-range(10)}
PYTHON=${PYTHON:-python}
read -r -a pretrain_args <<< "${PRETRAIN_ARGS:-}"
read -r -a finetune_args <<< "${FINETUNE_ARGS:-}"
quiet=(trainer.enable_progress_bar=false)
status=0

# Hydra quoting, so that any folder name survives the override parser.
quote() { local s=${1//\\/\\\\}; printf "'%s'" "${s//\'/\\\'}"; }

$PYTHON -m pretrain -m experiment=fashion_pretrain "task=$TASKS" seed=0 \
  "hydra.sweep.dir=$(quote "$OUT/pretrain")" "${quiet[@]}" "${pretrain_args[@]}" || status=1

encoders=""
for task in ${TASKS//,/ }; do
  file="$OUT/pretrain/$task-seed0/encoder.safetensors"
  if [[ -f $file ]]; then encoders+="$(quote "$file"),"; else echo "no encoder for task $task: left out" >&2; fi
done

$PYTHON -m finetune -m experiment=fashion_transfer "encoder=${encoders}none" "seed=$SEEDS" \
  "hydra.sweep.dir=$(quote "$OUT/finetune")" "${quiet[@]}" "${finetune_args[@]}" || status=1

$PYTHON -m finetune.report "$OUT/finetune" --out "$OUT" || status=1
exit $status
