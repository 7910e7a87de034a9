"""Batched log-determinant and inverse (extension op ``fastflow::slogdet_inverse``) against truths that
do not come from torch: numpy's LAPACK (OpenBLAS) in float64, and mpmath at 50 digits on small sizes.

Every value test runs twice: through the public functions (the C++ extension) and through the
``*_reference`` fallbacks (torch.linalg in float64), so the two paths are held to the same truth.
Tolerances (float64 input): log|det| to 1e-9 absolute + 1e-12 relative, inverses to 1e-9 of their
largest entry; ill-conditioned matrices (condition number 1e6) lose about six more digits, so they
get 1e-6 on log|det| and 1e-5 on the inverse, as does torch in float64. Against mpmath (n <= 8, entries
of order 1) both paths must agree to 1e-13 relative. float32 input is computed
in float64 and rounded once, so it must be within one float32 ulp (2**-23 relative) of the float64
truth of the same (float32) matrix.

torch.linalg runs single-threaded here (the reference path): with two threads, MKL's
LU in torch 2.14.1 returns wrong factors for n >= 160 on the AMD EPYC development machines (log|det|
off by tens, sometimes "Parameter 6 was incorrect on entry to DLASWP").
"""

import contextlib
import math
import warnings

import mpmath
import numpy as np
import pytest
import torch

from fastflow.ops import _extension
from fastflow.ops import slogdet as ops
from fastflow.ops.slogdet import (
    batched_inverse,
    batched_inverse_reference,
    batched_slogdet,
    batched_slogdet_inverse,
    batched_slogdet_reference,
)

PATHS = {
    "extension": (batched_slogdet, batched_inverse),
    "reference": (batched_slogdet_reference, batched_inverse_reference),
}
F64 = {"logdet": dict(atol=1e-9, rtol=1e-12), "inverse": 1e-9}
ILL = {"logdet": dict(atol=1e-6, rtol=0.0), "inverse": 1e-5}
F32_RTOL = 2.0**-23
# (n, B): n from 1 to 512 across both CPU paths (unblocked up to 56 with the inverse and 80 without,
# blocked above, and rows split over threads for a few matrices from 128), large n with small B.
SIZES = [
    (1, 5),
    (2, 4),
    (3, 7),
    (5, 3),
    (8, 3),
    (9, 4),
    (12, 6),
    (16, 2),
    (17, 3),
    (24, 3),
    (33, 2),
    (48, 3),
    (56, 2),
    (57, 2),
    (64, 2),
    (80, 2),
    (81, 2),
    (96, 2),
    (128, 1),
    (130, 3),
    (200, 1),
    (256, 2),
    (512, 1),
]


@contextlib.contextmanager
def single_thread():
    """torch (and MKL) on one thread inside the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(params=sorted(PATHS))
def path(request):
    if request.param == "extension":
        yield PATHS["extension"]
    else:
        with single_thread():
            yield PATHS["reference"]


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    w = torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
    with single_thread():
        return torch.linalg.qr(w)[0]


def numpy_slogdet(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 truth from numpy's LAPACK (not torch's): (sign, log|det|) ``[B]``."""
    sign, logabsdet = np.linalg.slogdet(weight.detach().double().numpy())
    return torch.from_numpy(np.asarray(sign)), torch.from_numpy(np.asarray(logabsdet))


def numpy_inverse(weight: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.linalg.inv(weight.detach().double().numpy()))


def assert_slogdet(sign, logabsdet, weight, tol=F64) -> None:
    """sign and log|det| of ``weight`` against numpy's float64 slogdet of the same matrices."""
    true_sign, true_logabsdet = numpy_slogdet(weight)
    assert sign.dtype == logabsdet.dtype == weight.dtype
    assert sign.shape == logabsdet.shape == weight.shape[:1]
    torch.testing.assert_close(sign.double(), true_sign, atol=0, rtol=0)
    torch.testing.assert_close(logabsdet.double(), true_logabsdet, **tol["logdet"])


def assert_inverse(inverse, weight, tol=F64) -> None:
    """``inverse`` against numpy's float64 inverse, to ``tol["inverse"]`` of its largest entry."""
    truth = numpy_inverse(weight)
    assert inverse.dtype == weight.dtype and inverse.shape == weight.shape
    scale = truth.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(inverse.double() / scale, truth / scale, atol=tol["inverse"], rtol=0)


def test_extension_is_built_and_used():
    """Where a compiler exists the op must come from the extension, with its CUDA kernel when the
    build settings include CUDA (so a broken CUDA build cannot pass as the fallback)."""
    build = _extension.build_module()
    if build is None or build.cxx_compiler() is None:
        pytest.skip("no source checkout or no C++ compiler: the torch.linalg fallback is expected")
    assert _extension.load_library()
    assert _extension.has_kernel(ops.OP, "cpu")
    with_cuda, _ = build.build_cuda()
    assert _extension.has_kernel(ops.OP, "cuda") == with_cuda


def test_extension_runs_parallel_regions():
    """at::parallel_for is an OpenMP pragma compiled into the extension: a build without -fopenmp
    silently runs every batch on one thread. The built module must call into OpenMP."""
    import importlib.util

    spec = importlib.util.find_spec("fastflow._C")
    if spec is None or spec.origin is None:
        pytest.skip("fastflow._C was not built by setup.py (JIT or fallback path)")
    with open(spec.origin, "rb") as f:
        assert b"GOMP_parallel" in f.read()


@pytest.mark.parametrize("n,batch", SIZES)
def test_random(path, n, batch):
    slogdet, inverse = path
    w = torch.randn(batch, n, n, generator=rng(n), dtype=torch.float64)
    assert_slogdet(*slogdet(w), w)
    assert_inverse(inverse(w), w)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_against_mpmath(path, n):
    """Exact truths at 50 significant digits (mpmath's LU on the float64 entries): log|det|, its sign
    and the inverse of random and of badly scaled (rows 1e-3 to 1e3) matrices, to 1e-13 relative."""
    slogdet, inverse = path
    w = torch.randn(3, n, n, generator=rng(n), dtype=torch.float64)
    w[2] *= torch.logspace(-3, 3, n, dtype=torch.float64)[:, None]
    sign, logabsdet = slogdet(w)
    inv = inverse(w)
    with mpmath.workdps(50):
        for b in range(w.shape[0]):
            m = mpmath.matrix(w[b].tolist())
            det = mpmath.det(m)
            assert sign[b].item() == (1.0 if det > 0 else -1.0)
            assert abs(logabsdet[b].item() - float(mpmath.log(abs(det)))) <= 1e-13 * max(1.0, abs(logabsdet[b].item()))
            truth = torch.tensor((m**-1).tolist(), dtype=torch.float64)
            torch.testing.assert_close(inv[b], truth, atol=1e-13 * truth.abs().max().item(), rtol=1e-13)


@pytest.mark.parametrize("n,batch", [(3, 4), (48, 3), (130, 2)])
def test_with_grad_path_gives_the_same_values(n, batch):
    """With requires_grad the forward also forms the inverse (Gauss-Jordan); without, LU only."""
    w = torch.randn(batch, n, n, generator=rng(n), dtype=torch.float64, requires_grad=True)
    sign, logabsdet = batched_slogdet(w)
    assert_slogdet(sign.detach(), logabsdet.detach(), w.detach())
    assert not sign.requires_grad and logabsdet.requires_grad


@pytest.mark.parametrize("n", [1, 12, 64, 96, 256])
def test_orthogonal(path, n):
    slogdet, inverse = path
    w = random_orthogonal(2, n, rng(n))
    sign, logabsdet = slogdet(w)
    assert_slogdet(sign, logabsdet, w)
    torch.testing.assert_close(logabsdet, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_inverse(inverse(w), w)
    torch.testing.assert_close(inverse(w), w.mT, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [8, 48, 100])
def test_ill_conditioned(path, n):
    """Condition number 1e6: U diag(logspace(0, -6)) V^T."""
    slogdet, inverse = path
    g = rng(n)
    singular_values = torch.logspace(0, -6, n, dtype=torch.float64)
    w = random_orthogonal(2, n, g) @ torch.diag_embed(singular_values) @ random_orthogonal(2, n, g)
    assert_slogdet(*slogdet(w), w, ILL)
    assert_inverse(inverse(w), w, ILL)


@pytest.mark.parametrize("n", [2, 9, 90])
def test_negative_determinant(path, n):
    slogdet, _ = path
    w = random_orthogonal(3, n, rng(n))
    with single_thread():
        w[:, 0] *= -torch.linalg.det(w).sign()[:, None]  # det = -1
    sign, logabsdet = slogdet(w)
    assert_slogdet(sign, logabsdet, w)
    torch.testing.assert_close(sign, -torch.ones(3, dtype=torch.float64), atol=0, rtol=0)


def singular_batch(n: int) -> torch.Tensor:
    """[4, n, n]: three matrices whose elimination meets an exactly zero pivot (a zero row, a zero
    column, an integer rank-1 one) and a regular one. (Repeated rows are singular too, but rounding
    leaves a tiny nonzero pivot, in LAPACK as here.)"""
    w = torch.randn(4, n, n, generator=rng(n), dtype=torch.float64)
    w[0, n // 2] = 0.0
    w[1, :, n // 3] = 0.0
    w[2] = torch.outer(torch.arange(1.0, n + 1.0), torch.arange(2.0, n + 2.0))
    return w


def assert_singular(sign, logabsdet, inverse) -> None:
    torch.testing.assert_close(sign, torch.zeros_like(sign), atol=0, rtol=0)
    assert torch.isneginf(logabsdet).all()
    assert torch.isnan(inverse).all()


@pytest.mark.parametrize("n", [2, 7, 40, 100])
def test_exactly_singular(n):
    """fastflow's kernel on exactly singular matrices: sign 0, log|det| -inf and an all-NaN inverse; the
    rest unaffected, through the LU-only path (no grad) and the Gauss-Jordan one (the inverse). n = 2
    makes the integer rank-1 matrix [[2, 3], [4, 6]]."""
    w = singular_batch(n)
    sign, logabsdet = batched_slogdet(w)
    inv = batched_inverse(w)
    assert_singular(sign[:3], logabsdet[:3], inv[:3])
    assert_slogdet(sign[3:], logabsdet[3:], w[3:])
    assert_inverse(inv[3:], w[3:])


@pytest.mark.parametrize("n", [2, 7, 40, 100])
def test_exactly_singular_reference(n):
    """The torch.linalg fallback on the same matrices, held to what IEEE arithmetic allows, not to one
    LAPACK's rounding: which LU torch runs depends on the CPU (MKL on Intel leaves a pivot of order
    eps instead of an exact zero for the rank-1 matrix: sign -1, log|det| -34.9 at n = 2; OpenBLAS or
    MKL on AMD gives the exact zero). So a singular matrix gets either sign 0 and log|det| -inf, or
    |det| below n * eps * the product of its row norms (Hadamard's bound, times the backward error
    of LU); and either an all-NaN inverse or one that is not finite or has a condition number
    (Frobenius) of at least 1 / (n * eps). The regular matrix must be right as in every other test."""
    w = singular_batch(n)
    with single_thread():
        sign, logabsdet = batched_slogdet_reference(w)
        inv = batched_inverse_reference(w)
    eps = torch.finfo(torch.float64).eps
    for b in range(3):
        if sign[b] == 0:
            assert torch.isneginf(logabsdet[b])
        else:
            bound = math.log(n * eps) + torch.linalg.vector_norm(w[b], dim=1).log().sum().item()
            assert logabsdet[b].item() <= bound, (b, logabsdet[b].item(), bound)
        if not torch.isnan(inv[b]).all() and torch.isfinite(inv[b]).all():
            condition = torch.linalg.matrix_norm(w[b]) * torch.linalg.matrix_norm(inv[b])
            assert condition.item() >= 1.0 / (n * eps), (b, condition.item())
    assert_slogdet(sign[3:], logabsdet[3:], w[3:])
    assert_inverse(inv[3:], w[3:])


@pytest.mark.parametrize("n", [7, 100])
def test_exactly_singular_triangular(n):
    """Upper triangular with a zero on the diagonal (torch's batched MKL LU misses this one)."""
    w = torch.randn(3, n, n, generator=rng(n), dtype=torch.float64).triu()
    w[:, n // 2, n // 2] = 0.0
    assert_singular(*batched_slogdet_inverse(w))


@pytest.mark.parametrize("n,batch", [(3, 1024), (12, 512), (48, 64)])
def test_large_batch(path, n, batch):
    slogdet, inverse = path
    w = torch.randn(batch, n, n, generator=rng(n), dtype=torch.float64)
    assert_slogdet(*slogdet(w), w)
    assert_inverse(inverse(w), w)


@pytest.mark.parametrize("n", [6, 100])
def test_strided_inputs(path, n):
    """Transposed, sliced, batch-strided and batch-broadcast (stride 0) inputs."""
    slogdet, inverse = path
    base = torch.randn(4, 2 * n, 2 * n, generator=rng(n), dtype=torch.float64)
    cases = [base[:, :n, :n].mT, base[:, ::2, 1::2], base[::2, n:, :n], base[:1, :n, :n].expand(3, n, n)]
    for w in cases:
        assert not w.is_contiguous()
        assert_slogdet(*slogdet(w), w)
        assert_inverse(inverse(w), w)


@pytest.mark.parametrize("n", [0, 4, 100])
def test_empty_batch(path, n):
    slogdet, inverse = path
    w = torch.empty(0, n, n, dtype=torch.float64)
    sign, logabsdet = slogdet(w)
    assert sign.shape == logabsdet.shape == (0,)
    assert inverse(w).shape == (0, n, n)


def test_zero_by_zero_matrices(path):
    """det of a 0 x 0 matrix is 1, as in torch.linalg.slogdet."""
    slogdet, inverse = path
    sign, logabsdet = slogdet(torch.empty(3, 0, 0, dtype=torch.float64))
    torch.testing.assert_close(sign, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(logabsdet, torch.zeros(3, dtype=torch.float64))
    assert inverse(torch.empty(3, 0, 0, dtype=torch.float64)).shape == (3, 0, 0)


@pytest.mark.parametrize("n", [3, 24, 48, 96, 384])
def test_float32_input_is_rounded_float64(path, n):
    """float32 in, float32 out, within one float32 ulp of the float64 result for the same matrix."""
    slogdet, inverse = path
    w = (
        random_orthogonal(2, n, rng(n)) + 0.3 * torch.randn(2, n, n, generator=rng(n + 1), dtype=torch.float64) / n**0.5
    ).float()
    sign, logabsdet = slogdet(w)
    inv = inverse(w)
    true_sign, true_logabsdet = numpy_slogdet(w)
    truth = numpy_inverse(w)
    assert sign.dtype == logabsdet.dtype == torch.float32
    torch.testing.assert_close(sign.double(), true_sign, atol=0, rtol=0)
    torch.testing.assert_close(logabsdet.double(), true_logabsdet, atol=1e-10, rtol=F32_RTOL)
    assert inv.dtype == torch.float32
    torch.testing.assert_close(inv.double(), truth, atol=1e-10 * truth.abs().max().item(), rtol=F32_RTOL)


def test_float32_gradient_is_rounded_float64():
    w = torch.randn(3, 40, 40, generator=rng(), dtype=torch.float64).float().requires_grad_()
    batched_slogdet(w)[1].sum().backward()
    truth = numpy_inverse(w).mT
    torch.testing.assert_close(w.grad.double(), truth, atol=1e-10 * truth.abs().max().item(), rtol=F32_RTOL)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_gradcheck(n):
    w = torch.randn(2, n, n, generator=rng(n), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: batched_slogdet(x)[1], (w,))
    assert torch.autograd.gradcheck(batched_inverse, (w,))
    assert torch.autograd.gradcheck(lambda x: torch.cat([t.flatten() for t in batched_slogdet_inverse(x)[1:]]), (w,))


def test_gradgradcheck():
    w = torch.randn(2, 4, 4, generator=rng(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: batched_slogdet(x)[1], (w,))
    assert torch.autograd.gradgradcheck(batched_inverse, (w,))


@pytest.mark.parametrize("n", [30, 150])
def test_gradient_is_inverse_transpose(n):
    """d log|det W| / dW = W^-T (numpy's inverse), through the extension and the fallback."""
    w = torch.randn(2, n, n, generator=rng(n), dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.5, -2.0], dtype=torch.float64)
    truth = weights[:, None, None] * numpy_inverse(w).mT
    for slogdet in (batched_slogdet, batched_slogdet_reference):
        w.grad = None
        with single_thread():
            (slogdet(w)[1] * weights).sum().backward()
        torch.testing.assert_close(w.grad, truth, atol=1e-10, rtol=1e-10)


def test_autograd_of_the_raw_op():
    """The C++ autograd formula of ``fastflow::slogdet_inverse``: gradients of log|det| and of the
    inverse together, with the inverse kept by the forward (True) and recomputed in the backward
    (False), against torch.linalg's autograd in float64."""
    w = torch.randn(3, 6, 6, generator=rng(), dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 6, 6, generator=rng(1), dtype=torch.float64)
    _, logabsdet, inverse = torch.ops.fastflow.slogdet_inverse(w, True)
    (logabsdet.sum() + (inverse * probe).sum()).backward()
    truth_w = w.detach().clone().requires_grad_()
    with single_thread():
        (torch.linalg.slogdet(truth_w)[1].sum() + (torch.linalg.inv(truth_w) * probe).sum()).backward()
    torch.testing.assert_close(w.grad, truth_w.grad, atol=1e-10, rtol=1e-10)
    w.grad = None
    sign, logabsdet, inverse = torch.ops.fastflow.slogdet_inverse(w, False)
    assert not sign.requires_grad and not inverse.requires_grad and inverse.numel() == 0
    logabsdet.sum().backward()
    torch.testing.assert_close(w.grad, torch.linalg.inv(w.detach()).mT, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (torch.zeros(2, 3, 4), ValueError, r"\[B, n, n\]"),
        (torch.zeros(3, 3), ValueError, r"\[B, n, n\]"),
        (torch.zeros(1, 2, 3, 3), ValueError, r"\[B, n, n\]"),
        (torch.zeros(2, 3, 3, dtype=torch.int64), TypeError, "float32 or float64"),
        (torch.zeros(2, 3, 3, dtype=torch.float16), TypeError, "float32 or float64"),
        (torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]), ValueError, "finite"),
        (torch.tensor([[[1.0, 0.0], [float("inf"), 1.0]]]), ValueError, "finite"),
    ],
)
def test_bad_input(path, bad, error, match):
    for fn in path:
        with pytest.raises(error, match=match):
            fn(bad)


def test_bad_input_to_the_raw_op():
    op = torch.ops.fastflow.slogdet_inverse
    with pytest.raises(ValueError, match=r"\[B, n, n\]"):
        op(torch.zeros(2, 3, 4), True)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(torch.zeros(2, 3, 3, dtype=torch.int32), False)
    w = torch.eye(3).repeat(4, 1, 1)
    w[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="matrix 2 of the batch has NaN or infinite"):
        op(w, True)


def test_meta_tensors():
    w = torch.empty(5, 7, 7, device="meta")
    sign, logabsdet, inverse = batched_slogdet_inverse(w)
    assert sign.shape == logabsdet.shape == (5,) and inverse.shape == (5, 7, 7)
    assert inverse.device.type == "meta" and inverse.dtype == torch.float32
    assert batched_inverse(w.double()).dtype == torch.float64
    assert torch.ops.fastflow.slogdet_inverse(w, False)[2].shape == (0,)


def test_torch_compile_forward_and_backward():
    """One graph (fullgraph) through dynamo and AOTAutograd: fake impl and registered autograd."""
    torch._dynamo.reset()

    def loss(w):
        sign, logabsdet = batched_slogdet(w)
        return (sign * logabsdet).sum() + batched_inverse(w).square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    w = torch.randn(3, 5, 5, generator=rng(), dtype=torch.float64, requires_grad=True)
    value = compiled(w)
    value.backward()
    grad = w.grad
    w.grad = None
    loss(w).backward()
    torch.testing.assert_close(value, loss(w.detach()))
    torch.testing.assert_close(grad, w.grad)


def test_fallback_warns_once(monkeypatch):
    """Without the extension (no module, no build) the ops fall back with one RuntimeWarning."""
    monkeypatch.setattr(_extension, "_import_built", lambda: "not built")
    monkeypatch.setattr(_extension, "_build_just_in_time", lambda import_error: "no compiler")
    monkeypatch.setattr(_extension, "_loaded", None)  # restored (loaded) by monkeypatch afterwards
    with pytest.warns(RuntimeWarning, match="fall back to torch.linalg"):
        assert not _extension.load_library()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _extension.load_library()


# ---- the CUDA kernels (run by benchmarks/gpu_check.sh on a CUDA machine; skipped elsewhere) ----

needs_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and _extension.load_library() and _extension.has_kernel(ops.OP, "cuda")),
    reason="needs a CUDA device and the extension built with its CUDA sources",
)


@needs_cuda_kernel
@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,batch", [(1, 5), (3, 1024), (12, 64), (33, 7), (48, 34), (64, 8), (65, 4), (128, 3), (384, 2)]
)
def test_cuda_matches_float64_truth(n, batch):
    """One block per matrix up to n = 64, the ATen LU hand-off above: both against CPU float64."""
    w = torch.randn(batch, n, n, generator=rng(n), dtype=torch.float64)
    sign, logabsdet, inverse = batched_slogdet_inverse(w.cuda())
    assert_slogdet(sign.cpu(), logabsdet.cpu(), w)
    assert_inverse(inverse.cpu(), w)
    w32 = w.float()
    _, logabsdet32 = batched_slogdet(w32.cuda().mT)  # float32 and transposed
    with single_thread():
        truth = torch.linalg.slogdet(w32.double().mT)[1]
    torch.testing.assert_close(logabsdet32.cpu().double(), truth, atol=1e-10, rtol=F32_RTOL)


@needs_cuda_kernel
@pytest.mark.gpu
@pytest.mark.parametrize("n", [2, 40, 100])
def test_cuda_singular_and_gradient(n):
    w = singular_batch(n)
    assert_singular(*[t.cpu() for t in batched_slogdet_inverse(w.cuda()[:3])])
    regular = w[3:].cuda().requires_grad_()
    batched_slogdet(regular)[1].sum().backward()
    with single_thread():
        truth = torch.linalg.inv(w[3:]).mT
    torch.testing.assert_close(regular.grad.cpu(), truth, atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match="finite"):
        batched_slogdet(torch.full((1, n, n), float("nan"), device="cuda"))
