#!/usr/bin/env bash
# The device command for a CUDA machine (see benchmarks/device/gpu_check.py): environment, build for the
# card, GPU tests, racecheck, fused ops, batched slogdet, whole training steps, in at most ~8 minutes,
# everything under $OUT (else ./gpu_check_out), summary table last.
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # the same stages' plumbing on the CPU, tiny shapes
# Uses $PYTHON, else .venv/bin/python, else python3 (the GPU machine's own torch; never installs torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.device.gpu_check "$@"
