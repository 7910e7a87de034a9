"""Wolf's loss against an ELBO computed here from its parts, in float64, without ``model.loss``.

Paper section 3 / wolf_spec.md section 5: per image, with bins y = floor(p / 2**(8 - n)) and
K = 2**n bins, the dequantised input is x~ = 2 (y + u) / K - 1 (u ~ U[0, 1)), the encoder sees
2 y / K - 1 without noise, z = mu + sigma eps, and

    bits/dim = (-log p(x~ | z) + log q(z | x) - log p(z) + D log(K / 2)) / (D ln 2).

Here log q is a diagonal Gaussian density written out, log p(z) and log p(x~ | z) are N(0, I) densities
of the flows' outputs plus log|det| of the brute-force autograd Jacobians of the prior flow and the
decoder flow (numpy's LAPACK, not the model's layer logdets nor torch.linalg), and the noise (eps, u)
is redrawn from a generator seeded like the one passed to ``model.loss`` in the order the model draws
it (eps first, then u). Only the networks' outputs are the model's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fastflow.config import EncoderConfig, PriorConfig, load_model_config
from fastflow.models import build_model


def tiny_wolf_8x8(n_bits: int = 8, prior_steps: int = 1):
    """tiny_wolf at 8x8 (D = 192), so that the decoder's full Jacobian is cheap."""
    tiny = load_model_config("tiny_wolf")
    return dataclasses.replace(
        tiny,
        image_size=8,
        n_bits=n_bits,
        encoder=EncoderConfig(levels=1, hidden_planes=[8], out_planes=4),
        prior=PriorConfig(num_steps=prior_steps, hidden_features=16),
    )


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def perturbed_model(config, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Data-dependent init, then every parameter moved off its init (zero-init couplings, a near-zero
    encoder head and an identity-like prior would hide wrong terms), float64, eval mode."""
    torch.manual_seed(seed)
    model = build_model(config).double()
    model.initialize(images(16, config.image_size, seed), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def gaussian_log_density(
    x: np.ndarray, mean: np.ndarray | float = 0.0, log_var: np.ndarray | float = 0.0
) -> np.ndarray:
    """sum over the last axis of log N(x; mean, exp(log_var))."""
    return (-0.5 * ((x - mean) ** 2 / np.exp(log_var) + log_var + math.log(2 * math.pi))).sum(-1)


def log_abs_det_jacobian(f, x: torch.Tensor) -> float:
    """log|det df/dx| of a map between flat vectors, from its autograd Jacobian, by numpy's LAPACK."""
    jac = torch.autograd.functional.jacobian(f, x, vectorize=True).numpy()
    sign, logabsdet = np.linalg.slogdet(jac)
    assert sign != 0
    return float(logabsdet)


def independent_elbo(model, x: torch.Tensor, seed: int) -> dict[str, np.ndarray]:
    """Per-image bits/dim, KL (nats) and -log p(y | z) in bin units (nats), computed from the parts."""
    config = model.config
    b, d, k = x.shape[0], x[0].numel(), 2**config.n_bits
    shape = tuple(x.shape[1:])
    bins = np.floor(x.numpy().astype(np.float64) / 2 ** (8 - config.n_bits))
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn((b, model.z_dim), generator=gen).double().numpy()
    u = torch.rand(x.shape, generator=gen).double().numpy()

    with torch.no_grad():
        mu, log_var = (t.numpy() for t in model.encoder(torch.from_numpy(2 * bins / k - 1)))
    z = mu + np.exp(0.5 * log_var) * eps
    log_q = gaussian_log_density(z, mu, log_var)

    x_tilde = 2 * (bins + u) / k - 1
    log_p_z, log_p_x = np.empty(b), np.empty(b)
    for i in range(b):
        zi = torch.from_numpy(z[i])
        with torch.no_grad():
            prior_out = model.prior(zi[None])[0][0].numpy()
        log_p_z[i] = gaussian_log_density(prior_out) + log_abs_det_jacobian(lambda t: model.prior(t[None])[0][0], zi)

        def decoder(flat: torch.Tensor, zi: torch.Tensor = zi) -> torch.Tensor:
            return model.flow(flat.view(1, *shape), zi[None])[0].flatten()

        xi = torch.from_numpy(x_tilde[i].reshape(-1))
        with torch.no_grad():
            v = decoder(xi).numpy()
        log_p_x[i] = gaussian_log_density(v) + log_abs_det_jacobian(decoder, xi)

    kl = log_q - log_p_z
    # x~ = 2 y / K - 1 per dimension: log p(y | z) = log p(x~ | z) + D log(2 / K).
    nll_bins = -(log_p_x + d * math.log(2 / k))
    return {"bpd": (nll_bins + kl) / (d * math.log(2)), "kl": kl, "nll": nll_bins}


@pytest.mark.parametrize("n_bits, num_samples", [(8, 1), (5, 2)])
def test_wolf_loss_equals_the_elbo_computed_from_its_parts(n_bits: int, num_samples: int) -> None:
    """``model.loss`` (bpd, KL, NLL and the scalar loss) equals the independent ELBO to 1e-10; with
    ``num_samples`` = k the terms are the means over k draws (the batch repeated k times, one draw of
    noise for all k B rows)."""
    model = perturbed_model(tiny_wolf_8x8(n_bits))
    x = images(2, 8, seed=3)
    with torch.no_grad():
        out = model.loss(x, num_samples=num_samples, generator=torch.Generator().manual_seed(11))
    draws = independent_elbo(model, x.repeat(num_samples, 1, 1, 1), seed=11)
    truth = {key: value.reshape(num_samples, 2).mean(0) for key, value in draws.items()}
    if num_samples > 1:  # the draws differ, so averaging is not a no-op
        assert np.abs(np.diff(draws["kl"].reshape(num_samples, 2), axis=0)).min() > 1e-3
    # Not a degenerate case: the KL term and the flows' log-determinants are far from zero.
    assert np.abs(truth["kl"]).min() > 0.1
    np.testing.assert_allclose(out["kl"].numpy(), truth["kl"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(out["nll"].numpy(), truth["nll"], atol=1e-8, rtol=1e-12)
    np.testing.assert_allclose(out["bpd"].numpy(), truth["bpd"], atol=1e-10, rtol=0)
    assert abs(out["loss"].item() - truth["bpd"].mean()) < 1e-10


def test_kl_estimate_has_the_closed_form_expectation_under_a_gaussian_prior() -> None:
    """With no prior flow steps p(z) = N(0, I) and KL(q || p) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).

    The single-sample estimate log q(z) - log p(z) at z = mu + sigma eps is sum_d a_d eps_d + b_d eps_d^2
    + const with a = mu sigma and b = (sigma^2 - 1) / 2, so its variance is sum(a^2 + 2 b^2). The mean of
    K = 1024 draws (``num_samples``) must be within 5 standard errors of the closed form; the closed
    form itself (5 to 6 nats, standard errors 0.15) is far from zero and from its negative."""
    config = tiny_wolf_8x8(prior_steps=0)
    model = perturbed_model(config, scale=0.0)
    with torch.no_grad():  # a posterior far from N(0, I): mean |mu| 0.7, mean |log-variance| 1.0
        head = model.encoder.head
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=p.dtype))
    x = images(2, 8, seed=4)
    samples = 1024
    with torch.no_grad():
        out = model.loss(x, num_samples=samples, generator=torch.Generator().manual_seed(2))
        mu, log_var = model.encoder(2 * x.double() / 256 - 1)  # 8 bits: the bins are the pixels
    var = log_var.exp()
    closed_form = 0.5 * (mu.pow(2) + var - 1 - log_var).sum(1)
    std_error = ((mu.pow(2) * var + 0.5 * (var - 1).pow(2)).sum(1) / samples).sqrt()
    assert (mu.abs().mean() > 0.3) and (log_var.abs().mean() > 0.3), (mu, log_var)
    assert (closed_form > 20 * std_error).all(), (closed_form, std_error)
    assert ((out["kl"] - closed_form).abs() < 5 * std_error).all(), (out["kl"], closed_form, std_error)
