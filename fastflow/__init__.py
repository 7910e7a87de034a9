"""fastflow: Wolf, refined Glow and Glow with fused Triton kernels and a C++/CUDA extension (batched
log-determinants and inverses, and the CPU kernels of the ``"cpu"`` backend)."""

__version__ = "0.1.0"
