#!/usr/bin/env bash
# The GPU measurements of issue 21 in one run of at most ~9.5 minutes on one H100/H200. Everything goes to $OUT
# (at most 8 files, flat):
#   env.txt            GPU, driver, torch, python; which imports work
#   pytest.log         pytest -m gpu tests/gpu (CUDA vs CPU) and tests/core/test_hub.py (with the real huggingface_hub)
#   base.json          paper-base: batch sweep (eager / channels_last_3d / cudnn.benchmark), SDPA kernels, profile
#   base-profile.json  per operator, per layer category, per module type: eager ("before") and the fastest variant
#   large.json         paper-large: batch sweep (eager / channels_last_3d)
#   compile.json       paper-base: torch.compile per mode at batch 8 (graphs, breaks, recompiles, error vs eager)
#   run.log            all output, and the exit status of every phase
#
# The GPU image used so far has torch, pytest and huggingface_hub but not nibabel and no network: download the wheel
# once on a machine with network, in the repo root (.whl/ is git-ignored), and take the .whl folder along:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl nibabel==5.4.2
# then run "bash benchmarks/gpu_session.sh" there (allow 590 s); wheels in .whl are installed to /tmp/site first.
#
# A CPU dry run of the same steps at the tiny size (minutes; the compile phase is the slow one on a CPU):
#   GPU_SESSION_TINY=1 SKIP_COMPILE=1 OUT=/tmp/gs bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-run-out}"
PY="${PYTHON:-python3}"
mkdir -p "${OUT}"
LOG="${OUT}/run.log"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    "${PY}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "${LOG}" 2>&1 && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="${PWD}:${PYTHONPATH:-}"

if [ -n "${GPU_SESSION_TINY:-}" ]; then
    SIZE=(--tiny --device cpu)
    LARGE=(--tiny --device cpu)
    BASE_BUDGET=600 LARGE_BUDGET=600 COMPILE_BUDGET=600
else
    SIZE=(--device cuda --models paper-base --threads 8)
    LARGE=(--device cuda --models paper-large --threads 8)
    BASE_BUDGET=140 LARGE_BUDGET=100 COMPILE_BUDGET=110
fi

phase() {  # phase NAME SECONDS COMMAND...: run with a hard time limit, record the exit status
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    echo "=== ${name} (limit ${limit} s): $*" >> "${LOG}"
    timeout --kill-after=10 "${limit}" "$@" >> "${LOG}" 2>&1
    local rc=$?
    echo "=== ${name}: exit ${rc} after $((SECONDS - t0)) s" | tee -a "${LOG}"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "${PY}" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")
for name in ("nibabel", "pytest", "huggingface_hub", "flowlet.sampling", "flowlet.hub"):
    try:
        module = importlib.import_module(name)
        print("import", name, "ok", getattr(module, "__version__", ""))
    except Exception as exc:
        print("import", name, "FAILED:", type(exc).__name__, exc)
EOF
} > "${OUT}/env.txt" 2>&1
cat "${OUT}/env.txt" >> "${LOG}"

phase pytest 100 bash -c "'${PY}' -m pytest -q -rA -p no:cacheprovider -m gpu tests/gpu > '${OUT}/pytest.log' 2>&1; \
    rc=\$?; '${PY}' -m pytest -q -rs -p no:cacheprovider tests/core/test_hub.py >> '${OUT}/pytest.log' 2>&1; \
    exit \$(( rc || \$? ))"
tail -n 15 "${OUT}/pytest.log" >> "${LOG}"

phase base $((BASE_BUDGET + 60)) "${PY}" benchmarks/fullsize.py "${SIZE[@]}" --sections sweep attention profile \
    --max-batch 32 --budget "${BASE_BUDGET}" --out "${OUT}/base.json" --profile-out "${OUT}/base-profile.json"
phase large $((LARGE_BUDGET + 25)) "${PY}" benchmarks/fullsize.py "${LARGE[@]}" --sections sweep \
    --sweep-variants eager channels_last --max-batch 32 --budget "${LARGE_BUDGET}" --out "${OUT}/large.json"
if [ -z "${SKIP_COMPILE:-}" ]; then
    phase compile $((COMPILE_BUDGET + 25)) "${PY}" benchmarks/fullsize.py "${SIZE[@]}" --sections compile \
        --compile-batch 8 --compile-modes default reduce-overhead max-autotune-no-cudagraphs \
        --compile-min-budget 60 --budget "${COMPILE_BUDGET}" --out "${OUT}/compile.json"
fi
date -u >> "${LOG}"
ls -la "${OUT}" >> "${LOG}"
