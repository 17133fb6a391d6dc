#!/usr/bin/env bash
# The CIFAR-10 backdoor repair chain on a CPU, at reduced epochs, on the real CIFAR-10 JPEGs with PreResNet-20
# (configs/experiments/*_cifar10jpeg_preresnet20_cpu.yaml): two backdoored endpoints (50% of non-target training
# images poisoned) trained side by side, a path on N=2500 bonafide test images, its 11-point evaluation, and the
# fine-tuning baseline on the same subset, then the comparison table. The chain is scripts/run_suite.py's. Usage:
#   scripts/cifar10_jpeg_cpu.sh [DATA_ROOT (default data/cifar10-jpeg)] [ENDPOINT_EPOCHS (default 4)]
# DATA_ROOT holds the JPEGs as an image folder: DATA_ROOT/{train,test}/<class>/*.jpg.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-data/cifar10-jpeg}
EPOCHS=${2:-4}
if [ ! -d "$ROOT/train" ] || [ ! -d "$ROOT/test" ]; then
  echo "mcrobust: error: no image folder at $ROOT/train and $ROOT/test; unzip the CIFAR-10 JPEGs there" \
    "(one folder per class) or give their folder as the first argument" >&2
  exit 2
fi
exec "${PYTHON:-.venv/bin/python}" scripts/run_suite.py backdoor --dataset cifar10jpeg --net preresnet20_cpu \
  --sizes 2500 --baselines finetune --logs lightning_logs/cifar10_jpeg_cpu --parallel \
  --extra="--data.root $ROOT --trainer.enable_progress_bar false" --endpoint-extra="--trainer.max_epochs $EPOCHS"
