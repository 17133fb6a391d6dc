#!/usr/bin/env bash
# The CIFAR-10 backdoor repair chain on a CPU, at reduced epochs, on the real CIFAR-10 JPEGs with PreResNet-20:
# two backdoored endpoints (50% of non-target training images poisoned), a path on N=2500 bonafide test images,
# its 11-point evaluation, and the fine-tuning baseline on the same subset. Usage:
#   scripts/cifar10_jpeg_cpu.sh [DATA_ROOT (default data/cifar10-jpeg)] [ENDPOINT_EPOCHS (default 4)]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-data/cifar10-jpeg}
EPOCHS=${2:-4}
if [ ! -d "$ROOT/train" ]; then
  mkdir -p "$ROOT"
  unzip -q -o ../shared/data/cifar10-jpeg/train-1000-per-class.zip -d "$ROOT"
  unzip -q -o ../shared/data/cifar10-jpeg/test.zip -d "$ROOT"
fi
PY=${PYTHON:-.venv/bin/python}
OUT=lightning_logs/cifar10_jpeg_cpu
E=configs/experiments
DATA=(--data.dataset image_folder --data.root "$ROOT" --data.download false --data.num_workers 0)
NET=(--model.init_args.net.init_args.depth 20)
LOG=(--trainer.logger.init_args.save_dir "$OUT" --trainer.enable_progress_bar false)
for seed in 1 2; do
  version=$([ "$seed" = 1 ] && echo a || echo b)
  OMP_NUM_THREADS=1 $PY -m mcrobust fit --config $E/backdoor_cifar10_preresnet26.yaml "${DATA[@]}" "${NET[@]}" "${LOG[@]}" \
    --trainer.max_epochs "$EPOCHS" --seed_everything $seed --trainer.logger.init_args.version $version &
done
wait
REPAIR=$E/repair_cifar10jpeg_preresnet20_cpu.yaml
$PY -m mcrobust fit --config $REPAIR --data.root "$ROOT" "${LOG[@]}" --trainer.logger.init_args.version path
$PY -m mcrobust test --config $REPAIR --data.root "$ROOT" "${LOG[@]}" --trainer.logger.init_args.version path_test \
  --ckpt_path $OUT/repair_cifar10jpeg_preresnet20_cpu/path/checkpoints/last.ckpt
IDX=$OUT/repair_cifar10jpeg_preresnet20_cpu/path/bonafide_indices.json
FT=$E/baseline_finetune_cifar10_vgg16.yaml
FTNET=(--model.init_args.net mcrobust.nets.PreResNet --model.init_args.net.init_args.depth 20)
$PY -m mcrobust fit --config $FT "${FTNET[@]}" "${DATA[@]}" "${LOG[@]}" --data.bonafide_pool test_half \
  --data.bonafide_indices_path $IDX --data.eval_size 2000 --trainer.max_epochs 20 --trainer.logger.init_args.version finetune \
  --model.init_args.init_weights $OUT/backdoor_cifar10_preresnet26/a/checkpoints/last.ckpt
$PY -m mcrobust test --config $FT "${FTNET[@]}" "${DATA[@]}" "${LOG[@]}" --data.bonafide_pool test_half \
  --data.bonafide_indices_path $IDX --data.eval_size 2000 --trainer.logger.init_args.version finetune_test \
  --ckpt_path $OUT/baseline_finetune_cifar10_vgg16/finetune/checkpoints/last.ckpt
$PY -m mcrobust.report $OUT/repair_cifar10jpeg_preresnet20_cpu/path_test $OUT/baseline_finetune_cifar10_vgg16/finetune_test \
  --out $OUT
