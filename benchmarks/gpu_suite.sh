#!/usr/bin/env bash
# The GPU suite of issue 17 (benchmarks/gpu_suite.py): at most 10 minutes of GPU time, JSON + Markdown in OUT.
#
#   benchmarks/gpu_suite.sh [OUT] [DATA] [more gpu_suite.py options]
#   benchmarks/gpu_suite.sh benchmarks/out/gpu ../shared/data/cifar10-jpeg      # the defaults
#   benchmarks/gpu_suite.sh /tmp/smoke "" --smoke                                 # tiny sizes, CPU, < 1 minute
#
# OUT gets gpu_suite.json and gpu_suite.md (rewritten after every section, so a run cut short keeps what it
# measured); DATA is the folder with the CIFAR-10 JPEG zips (train.zip, test.zip; see its README). PYTHON picks
# the interpreter (default: the project's .venv, else python3). Sections that would start after --budget-s
# (540 s) are skipped, and a hard timeout stops the run at 590 s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/out/gpu}
DATA=${2:-../shared/data/cifar10-jpeg}
shift $(( $# < 2 ? $# : 2 ))
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# glibc keeps freed blocks (as the Makefile sets for every command): no page-fault storms in the CPU parts
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
exec timeout -k 10 590 "$PYTHON" benchmarks/gpu_suite.py --out "$OUT" --data "${DATA:-../shared/data/cifar10-jpeg}" "$@"
