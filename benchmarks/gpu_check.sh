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

# ---- model benchmarks (issue 6; block appended by the model-benchmark engineer) ----------------------
# Stock Glow, refined Glow and Wolf at GPU batch sizes (CIFAR-10 64, ImageNet 64 32, CelebA-HQ 256 8, full
# depth), backends torch / triton / triton+bf16, then the op benchmarks; writes the GPU block of
# benchmarks/RESULTS.md, benchmarks/results_cuda.csv and benchmarks/throughput_cuda.png. To time the
# public rosinality/glow-pytorch Glow beside ours, set ROSINALITY=/path/to/its/model.py.
"$PY" -m benchmarks --device cuda ${ROSINALITY:+--rosinality "$ROSINALITY"} "$@"
