#!/usr/bin/env bash
# The full-size GPU measurements in one go (about 8 minutes on one H100/H200): 2 mm phantoms are written on the
# CPU while the GPU runs the precision and sampling sections, then paper-base/paper-large training steps, the
# DenseNet121 BAP epoch at 91x109x91, and torch.compile if time is left.
# Usage: benchmarks/run_gpu.sh OUTDIR        (JSON + logs go to OUTDIR)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/results}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
mkdir -p "${OUT_DIR}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "${OUT_DIR}/gpu.txt" 2>&1
"${PY}" -m pipelines.phantoms --n 64 --voxel-size 2 --out "${WORK}/cohort" --no-progress \
    > "${OUT_DIR}/phantoms.log" 2>&1 &
"${PY}" benchmarks/fullsize.py --device cuda --threads 4 --cohort "${WORK}/cohort" --wait-cohort 300 \
    --budget "${FULLSIZE_BUDGET:-360}" --out "${OUT_DIR}/fullsize.json" 2>&1 | tee "${OUT_DIR}/fullsize.log"
wait
"${PY}" benchmarks/bap.py --device cuda --threads 8 --config paper --voxel-size 2 --subjects 64 --epochs 2 \
    --repeats 1 --work "${WORK}" --out "${OUT_DIR}/bap_densenet121_2mm.json" 2>&1 | tee "${OUT_DIR}/bap.log"
