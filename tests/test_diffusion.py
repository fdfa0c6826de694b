"""The improved-DDPM diffusion against closed forms computed independently here (numpy float64, scipy, mpmath)."""
import math

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from repa.diffusion import (GaussianDiffusion, discretized_gaussian_log_likelihood, linear_betas, normal_kl,
                            space_timesteps)

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.linear(T)


def _abar(k):
    """alpha-bar of timestep k (0-based), straight from the DDPM definition."""
    return float(np.prod(1.0 - np.linspace(1e-4, 0.02, T)[: k + 1]))


def test_linear_schedule_is_ddpm_and_rescales_with_steps():
    betas = linear_betas(T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / (T - 1))
    assert linear_betas(4000)[-1] == pytest.approx(0.005) and linear_betas(250)[0] == pytest.approx(4e-4)


def test_q_xt_given_x0_matches_closed_form_and_the_markov_chain(diffusion):
    x0 = torch.tensor([[1.5, -0.5, 0.0]], dtype=torch.float64)
    for k in (0, 1, 250, 999):
        mean, var, log_var = diffusion.q_mean_variance(x0, torch.tensor([k]))
        abar = _abar(k)
        assert np.allclose(mean.numpy(), math.sqrt(abar) * x0.numpy(), rtol=1e-12)
        assert np.allclose(var.numpy(), 1 - abar, rtol=1e-12) and np.allclose(log_var.numpy(), math.log(1 - abar))
    # run the chain x_k = sqrt(1 - b_k) x_{k-1} + sqrt(b_k) e for 200 steps and compare the moments with q
    rng = np.random.default_rng(0)
    betas = np.linspace(1e-4, 0.02, T)
    x = np.full((40000, 3), x0.numpy())
    for k in range(200):
        x = np.sqrt(1 - betas[k]) * x + np.sqrt(betas[k]) * rng.standard_normal(x.shape)
    mean, var, _ = diffusion.q_mean_variance(x0, torch.tensor([199]))
    assert np.allclose(x.mean(0), mean.numpy()[0], atol=0.01)
    assert np.allclose(x.var(0), var.numpy()[0], rtol=0.03)
    noise = torch.randn(1, 3, dtype=torch.float64)
    sample = diffusion.q_sample(x0, torch.tensor([199]), noise)
    assert torch.allclose(sample, mean + var.sqrt() * noise)


def test_posterior_mean_and_variance_match_bayes_rule(diffusion):
    """q(x_{k-1} | x_k, x_0) from the Gaussian prior q(x_{k-1} | x_0) and the likelihood q(x_k | x_{k-1})."""
    rng = np.random.default_rng(1)
    betas = np.linspace(1e-4, 0.02, T)
    for k in (1, 2, 10, 500, 999):
        x0, xk = rng.standard_normal(4), rng.standard_normal(4)
        abar_prev, alpha = _abar(k - 1), 1 - betas[k]
        precision = 1 / (1 - abar_prev) + alpha / betas[k]
        var = 1 / precision
        mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * xk / betas[k])
        got_mean, got_var, got_log_var = diffusion.q_posterior_mean_variance(
            torch.from_numpy(x0)[None], torch.from_numpy(xk)[None], torch.tensor([k]))
        assert np.allclose(got_mean.numpy()[0], mean, rtol=1e-10, atol=1e-12)
        assert np.allclose(got_var.numpy(), var, rtol=1e-10)
        assert np.allclose(got_log_var.numpy(), math.log(var), rtol=1e-10)
    # timestep 0: the posterior is the data itself (variance 0); the log variance is clipped to timestep 1's
    x0, x1 = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, x1, torch.tensor([0]))
    assert torch.allclose(mean, x0) and torch.all(var == 0)
    assert torch.allclose(log_var, diffusion.q_posterior_mean_variance(x0, x1, torch.tensor([1]))[2])


def test_gaussian_kl_matches_closed_form_and_integral():
    rng = np.random.default_rng(2)
    m1, m2 = rng.normal(size=50), rng.normal(size=50)
    s1, s2 = np.exp(rng.normal(size=50)), np.exp(rng.normal(size=50))
    expected = np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    got = normal_kl(*(torch.from_numpy(a) for a in (m1, 2 * np.log(s1), m2, 2 * np.log(s2))))
    assert np.allclose(got.numpy(), expected, rtol=1e-12)
    p, q = scipy.stats.norm(0.3, 0.7), scipy.stats.norm(-0.2, 1.3)
    integral, _ = scipy.integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -12, 12)
    value = normal_kl(torch.tensor(0.3), torch.tensor(2 * math.log(0.7)), torch.tensor(-0.2),
                      torch.tensor(2 * math.log(1.3)))
    assert value.item() == pytest.approx(integral, rel=1e-6)


def test_discretized_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, 400) / 127.5 - 1                    # pixel values on the [-1, 1] grid
    means = np.clip(x + rng.normal(scale=0.1, size=400), -1.2, 1.2)
    log_scales = rng.uniform(np.log(0.01), np.log(0.5), 400)
    scales = np.exp(log_scales)
    norm = scipy.stats.norm(means, scales)
    # bin mass from the CDF left of the mean and from the survival function right of it (no cancellation)
    right = x > means
    mass = np.where(right, norm.sf(x - 1 / 255) - norm.sf(x + 1 / 255), norm.cdf(x + 1 / 255) - norm.cdf(x - 1 / 255))
    with np.errstate(divide="ignore"):
        expected = np.where(x < -0.999, norm.logcdf(x + 1 / 255),
                            np.where(x > 0.999, norm.logsf(x - 1 / 255), np.log(mass)))
    ok = expected > math.log(1e-12) + 1                           # away from the reference's floor
    got = discretized_gaussian_log_likelihood(*(torch.from_numpy(a) for a in (x, means, log_scales)))
    assert ok.sum() > 300
    assert np.allclose(got.numpy()[ok], expected[ok], rtol=1e-9, atol=1e-9)
    assert np.all(got.numpy() >= math.log(1e-12) - 1e-12)


def test_discretized_likelihood_is_exact_in_the_tails_and_sums_to_one():
    mpmath.mp.dps = 50
    cdf = lambda z: mpmath.ncdf(z)                                # noqa: E731
    for x, mean, scale in [(0.5, 0.455, 0.01), (-0.3, -0.245, 0.008), (0.2, 0.25, 0.3)]:
        upper, lower = (x - mean + 1 / 255) / scale, (x - mean - 1 / 255) / scale
        expected = float(mpmath.log(cdf(upper) - cdf(lower)))
        got = discretized_gaussian_log_likelihood(torch.tensor(x, dtype=torch.float64),
                                                  torch.tensor(mean, dtype=torch.float64),
                                                  torch.tensor(math.log(scale), dtype=torch.float64))
        assert got.item() == pytest.approx(expected, rel=1e-9), (x, mean, scale)
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, scale in [(0.1, 0.05), (-0.9, 0.3), (0.99, 0.02)]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean),
                                                   torch.full_like(grid, math.log(scale)))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_has_finite_gradients_at_extreme_scales():
    x = (torch.arange(256.0) / 127.5 - 1).repeat(40)
    gen = torch.Generator().manual_seed(0)
    means = (torch.randn(x.shape, generator=gen) * 2).requires_grad_()
    log_scales = (torch.rand(x.shape, generator=gen) * 16 - 14).requires_grad_()   # std from 1e-6 to 7
    out = discretized_gaussian_log_likelihood(x, means, log_scales)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(means.grad).all() and torch.isfinite(log_scales.grad).all()


def test_learned_range_interpolates_log_beta_and_clipped_posterior_variance(diffusion):
    x_t = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    k = torch.tensor([0, 7, 999])
    for v, expected in [(1.0, np.log(linear_betas(T))), (-1.0, None)]:
        output = torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, v)], dim=1)
        step = diffusion.p_mean_variance(output, x_t, k)
        if expected is None:
            expected = diffusion.q_posterior_mean_variance(x_t, x_t, k)[2][:, 0, 0, 0].numpy()
        else:
            expected = expected[k.numpy()]
        assert np.allclose(step.log_variance[:, 0, 0, 0].numpy(), expected)
    half = diffusion.p_mean_variance(torch.cat([torch.zeros_like(x_t), torch.zeros_like(x_t)], 1), x_t, k)
    lo = diffusion.p_mean_variance(torch.cat([torch.zeros_like(x_t), -torch.ones_like(x_t)], 1), x_t, k)
    hi = diffusion.p_mean_variance(torch.cat([torch.zeros_like(x_t), torch.ones_like(x_t)], 1), x_t, k)
    assert torch.allclose(half.log_variance, (lo.log_variance + hi.log_variance) / 2)
    fixed = diffusion.p_mean_variance(torch.zeros_like(x_t), x_t, k)       # C channels: fixed large variance
    assert torch.allclose(fixed.variance[1:, 0, 0, 0], torch.from_numpy(linear_betas(T)[[7, 999]]))


def test_bound_term_vanishes_for_the_true_posterior_and_is_in_bits(diffusion):
    x0 = torch.rand(4, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    k = torch.tensor([1, 10, 300, 999])
    x_t = diffusion.q_sample(x0, k, noise)
    exact = torch.cat([noise, -torch.ones_like(x0)], dim=1)      # true epsilon, posterior variance
    assert torch.allclose(diffusion.vb_terms_bpd(exact, x0, x_t, k), torch.zeros(4, dtype=torch.float64),
                          atol=1e-9)
    off = torch.cat([noise + 0.1, torch.zeros_like(x0)], dim=1)
    p = diffusion.p_mean_variance(off, x_t, k)
    mean, _, log_var = diffusion.q_posterior_mean_variance(x0, x_t, k)
    nats = normal_kl(mean, log_var, p.mean, p.log_variance).flatten(1).mean(1)
    assert torch.allclose(diffusion.vb_terms_bpd(off, x0, x_t, k), nats / math.log(2))


def test_hybrid_loss_trains_the_mean_by_mse_and_the_variance_by_the_bound_only(diffusion):
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    k = torch.tensor([0, 5, 400, 999])
    x_t = diffusion.q_sample(x0, k, noise)
    output = torch.randn(4, 4, 4, 4, requires_grad=True)
    terms = diffusion.training_losses(output, x0, x_t, k, noise)
    assert torch.allclose(terms["mse"], ((noise - output[:, :2]) ** 2).flatten(1).mean(1))
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"]) and torch.all(terms["vb"] > 0)
    terms["loss"].sum().backward()
    mse_only = 2 * (output[:, :2] - noise) / (2 * 16)             # d mse / d eps: the bound adds nothing to eps
    assert torch.allclose(output.grad[:, :2], mse_only.detach(), atol=1e-6)
    assert output.grad[:, 2:].abs().sum() > 0
    eps_only = diffusion.training_losses(output[:, :2], x0, x_t, k, noise)
    assert torch.equal(eps_only["vb"], torch.zeros(4)) and torch.allclose(eps_only["loss"], terms["mse"])
    with pytest.raises(ValueError, match="channels"):
        diffusion.training_losses(output[:, :3], x0, x_t, k, noise)


def test_space_timesteps_semantics():
    kept = sorted(space_timesteps(1000, 250))
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert kept == sorted({round(j * 999 / 249) for j in range(250)})
    assert space_timesteps(1000, "250") == set(kept)
    assert sorted(space_timesteps(300, [10, 15, 20]))[:10] == [round(j * 99 / 9) for j in range(10)]
    assert len(space_timesteps(300, "10,15,20")) == 45 and max(space_timesteps(300, "10,15,20")) == 299
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, 1000) == set(range(1000))
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(100, 101)


def test_respaced_process_keeps_the_marginals_and_maps_to_base_time(diffusion):
    kept = sorted(space_timesteps(T, 25))
    process = diffusion.respace(kept)
    assert process.num_timesteps == 25
    assert torch.allclose(process.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12)
    assert process.model_time(torch.arange(25)).tolist() == [k / 1000 for k in kept]
    assert torch.allclose(diffusion.respace(range(T)).betas, diffusion.betas, rtol=1e-9)
