#!/usr/bin/env bash
# The GPU figures of the README, on a machine with an NVIDIA GPU (bf16: Ampere or newer):
#   1. section 2 of the benchmark on the GPU: the pipeline against a plain PyTorch loop,
#      bf16-mixed, ResNet-18, batch 512 (supervised pretraining and fine-tuning), images/s;
#   2. a bf16-mixed pretraining run through the CLI and a fine-tuning run of its encoder.
#
#   PRETEXT_DATA=DIR scripts/gpu_check.sh [OUT]      (default OUT: outputs/gpu_check)
set -euo pipefail

OUT=${1:-outputs/gpu_check}
PYTHON=${PYTHON:-python}
quiet=(trainer.enable_progress_bar=false)
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PYTHON -c "import torch, lightning; print(f'torch {torch.__version__}, lightning {lightning.__version__}')"
$PYTHON -m scripts.bench --sections 2 --gpu --json "$OUT/bench.json"

$PYTHON -m pretrain data=fashion_mnist task=supervised backbone=resnet18 trainer=gpu data.batch_size=512 \
  trainer.max_epochs=3 "hydra.run.dir=$OUT/pretrain" "${quiet[@]}"
$PYTHON -m finetune experiment=fashion_transfer "encoder=$OUT/pretrain/encoder.safetensors" trainer=gpu \
  "hydra.run.dir=$OUT/finetune" "${quiet[@]}"
