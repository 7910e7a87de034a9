"""Triton kernels of fastflow, installed as ``fastflow.kernels``.

Pure functions over tensors and their launch helpers, one file per fused op (and ``_common.py``, the
helpers the launchers share); no nn.Module and no model knowledge. The autograd wrappers and
plain-PyTorch references live in ``fastflow.ops``.
"""
