#!/usr/bin/env bash
# On a CUDA machine: run the fused-kernel tests on the GPU (compiled Triton, not the interpreter),
# then time every fused op against its torch backend at CIFAR-10 and CelebA-HQ 256 shapes.
#   bash benchmarks/gpu_check.sh            # tests + full benchmark
#   bash benchmarks/gpu_check.sh --quick    # tests + small shapes
# Uses $PYTHON, else .venv/bin/python, else python3. Prints only what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
unset TRITON_INTERPRET

"$PY" - <<'PY'
import sys, torch, triton
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device visible to torch; nothing to check")
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
PY

"$PY" -m pytest -q tests/test_actnorm_conv1x1.py tests/test_affine_coupling.py tests/test_cond_bias_elu.py
"$PY" benchmarks/bench_kernels.py "$@"
