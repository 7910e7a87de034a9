"""Static analysis of fastflow's GPU kernels without a GPU: every Triton kernel a Wolf training step
launches, specialised as Triton's runtime would and compiled for sm_80 and sm_90, its machine code
read; the CUDA extension's kernels through ``nvcc -Xptxas -v``; launches per step per backend.

``python -m benchmarks.kernel_report`` writes the tables into ``benchmarks/RESULTS.md``.
"""
