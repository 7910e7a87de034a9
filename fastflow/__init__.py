"""fastflow: Wolf, refined Glow and Glow with fused Triton kernels and a batched-logdet extension."""

__version__ = "0.1.0"
