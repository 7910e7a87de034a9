"""The device check for a CUDA machine (``bash benchmarks/gpu_check.sh``, which runs
:mod:`benchmarks.device.gpu_check`): its stages are :mod:`benchmarks.device.racecheck_gj` (the
Gauss-Jordan kernel under compute-sanitizer), :mod:`benchmarks.device.ops` (every fused op and the
batched slogdet) and :mod:`benchmarks.device.steps` (whole training steps). Timing scripts for any
machine are the rest of :mod:`benchmarks` (``python -m benchmarks NAME``)."""
