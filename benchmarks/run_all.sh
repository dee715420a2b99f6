#!/usr/bin/env bash
# Run every benchmark one after the other (never in parallel: they would disturb each other's timings).
# Usage: benchmarks/run_all.sh [--device cuda] [--full]   (extra flags are passed to every script)
# Tables go to stdout, JSON to benchmarks/results/<name>.json; cost_curves also writes docs/cost_curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
for name in haar unet sampling solvers bap cost_curves allocator; do
    echo "== ${name} =="
    "${PY}" "benchmarks/${name}.py" "$@"
done
