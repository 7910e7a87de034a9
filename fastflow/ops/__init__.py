"""The fused flow ops, one module per op: its plain-PyTorch reference, its autograd Function
(``<Op>Function``, calling the kernels of the same-named module in ``fastflow.kernels``) and the
``backend="auto" | "torch" | "triton" | "reference"`` dispatch ("reference": the paper's way, plain
PyTorch ops; see :mod:`fastflow.ops._backend`).

- :mod:`fastflow.ops.actnorm_conv1x1`: actnorm followed by an invertible 1x1 convolution;
- :mod:`fastflow.ops.affine_coupling`: the conditional affine (or additive) coupling;
- :mod:`fastflow.ops.cond_bias_elu`: bias + ELU of the coupling networks;
- :mod:`fastflow.ops.conv1x1_bias_elu`: the coupling networks' middle, 1x1 conv + bias + ELU;
- :mod:`fastflow.ops.slogdet`: batched log-determinants and inverses (the C++/CUDA extension).

The public entry points are gathered in :mod:`fastflow.functional` (``import fastflow.functional as
FF``); this package exports no functions, so ``fastflow.ops.<op>`` is always the module.
"""
