"""The fused flow ops, one module per op: its plain-PyTorch reference, its autograd Function
(``<Op>Function``, calling the kernels of the same-named module in ``fastflow.kernels``) with the
launchers registered as custom ops for ``torch.compile``, and the ``backend=`` dispatch over the
implementations ``"reference"``, ``"triton"`` and ``"cpu"`` (plus ``"auto"``), chosen by
:func:`fastflow.ops.backends.select`. The ``"cpu"`` implementation lives in :mod:`fastflow.ops.cpu`.

- :mod:`fastflow.ops.actnorm`: actnorm's formula (plain PyTorch; the coupling folds it);
- :mod:`fastflow.ops.actnorm_conv1x1`: actnorm followed by an invertible 1x1 convolution;
- :mod:`fastflow.ops.affine_coupling`: the conditional affine (or additive) coupling;
- :mod:`fastflow.ops.cond_bias_elu`: bias + ELU of the coupling networks;
- :mod:`fastflow.ops.conv1x1_bias_elu`: the coupling networks' middle, 1x1 conv + bias + ELU;
- :mod:`fastflow.ops.slogdet`: batched log-determinants and inverses (the C++/CUDA extension);
- :mod:`fastflow.ops.weight_norm`: weight normalisation of the weight-normalised layers (``fastflow.nn``).

The public entry points are gathered in :mod:`fastflow.functional` (``import fastflow.functional as
FF``); this package exports no functions, so ``fastflow.ops.<op>`` is always the module.
"""
