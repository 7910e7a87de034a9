#!/usr/bin/env bash
# One script for a lent CUDA machine: build the extension for the card, run the GPU-relevant tests
# compiled (Triton kernels, batched log-determinants, model backends), then benchmark everything at
# full batch sizes and print the table last. Meant to fit in 8 minutes on an A100/H100/H200.
#   bash benchmarks/gpu_check.sh            # build + tests + full benchmark
#   bash benchmarks/gpu_check.sh --quick    # build + tests + small shapes
# Uses $PYTHON, else .venv/bin/python, else python3. Prints only what was measured. To time the
# public rosinality/glow-pytorch Glow beside ours, set ROSINALITY=/path/to/its/model.py.
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

# The extension with its CUDA kernels for this card (sm_90 on H100/H200); fails loudly if it cannot.
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
SECONDS=0
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}" FASTFLOW_BUILD_CUDA=1 \
    "$PY" setup.py build_ext --inplace > /tmp/fastflow_build.log 2>&1 \
    || { tail -30 /tmp/fastflow_build.log; exit 1; }
echo "extension built for sm_${ARCH/./} in ${SECONDS} s"

"$PY" -m pytest -q -m "not slow" tests/test_actnorm_conv1x1.py tests/test_affine_coupling.py \
    tests/test_cond_bias_elu.py tests/test_batched_slogdet.py tests/test_model_backends.py

# Stock Glow, refined Glow and Wolf at GPU batch sizes (CIFAR-10 64, ImageNet 64 32, CelebA-HQ 256 8,
# full depth), backends torch / triton / triton+bf16, then the fused-op and log-determinant
# benchmarks (do_bench, GB/s, % of copy bandwidth); writes the GPU block of benchmarks/RESULTS.md,
# benchmarks/results_cuda.csv and benchmarks/throughput_cuda.png.
"$PY" -m benchmarks --device cuda ${ROSINALITY:+--rosinality "$ROSINALITY"} "$@"
