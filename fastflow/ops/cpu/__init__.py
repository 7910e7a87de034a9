"""The ``"cpu"`` implementation of the fused ops (:mod:`fastflow.ops.backends`), in one place: the
extension's C++ CPU kernels (``csrc/``) and the CPU formulations in torch ops.

- :mod:`fastflow.ops.cpu.actnorm_conv1x1`: the actnorm folded into the 1x1 convolution, one batched GEMM;
- :mod:`fastflow.ops.cpu.affine_coupling`: the C++ coupling kernels (``csrc/affine_coupling.cpp``);
- :mod:`fastflow.ops.cpu.cond_bias_elu`: the C++ bias + ELU kernels (``csrc/cond_bias_elu.cpp``) and the
  in-place ELU helpers that the hand-written backwards use;
- ``conv1x1_bias_elu``: ``conv2d``, then the bias + ELU above (in :mod:`fastflow.ops.conv1x1_bias_elu`);
- :mod:`fastflow.ops.cpu.coupling_net`: Wolf's coupling network as one autograd Function of GEMMs over
  channels-last rows, built from :mod:`fastflow.ops.cpu.conv_rows` (patches, the extension's
  ``csrc/patch_rows.cpp``) and :mod:`fastflow.ops.cpu.storage` (planes or rows).

Each module registers, with :func:`fastflow.ops.backends.register_cpu`, which calls its implementation
takes; :func:`fastflow.ops.backends.select` sends the others to the reference. The ops of
:mod:`fastflow.ops` import these modules, never the other way round.
"""

from fastflow.ops import backends
from fastflow.ops.cpu import actnorm_conv1x1, affine_coupling, cond_bias_elu, coupling_net  # noqa: F401  (register)

backends.register_cpu("conv1x1_bias_elu", lambda *tensors: True)
