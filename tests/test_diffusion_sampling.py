"""DDPM sampling against Gaussian data whose epsilon (and exact reverse variance) are known in closed form."""
from types import SimpleNamespace

import pytest
import torch

import repa
from repa.diffusion import base_diffusion, ddpm, ddpm_times, space_timesteps
from repa.guidance import GuidedModel


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Many tiny ops: one thread (the conftest fixture) is faster and immune to a busy machine."""


class GaussianEpsilon(torch.nn.Module):
    """Exact DDPM network for data x0 ~ N(mu[y], s^2 I), called like a DiT: ``model(x, t, y)``, t = timestep/1000.

    x_k = sqrt(abar) x0 + sqrt(1 - abar) e is Gaussian, so E[e | x_k] = sqrt(1 - abar) (x_k - sqrt(abar) mu) / d with
    d = abar s^2 + 1 - abar. With ``learned=True`` it also outputs the v in [-1, 1] that makes the reverse variance
    of the respaced process exact, Var[x_prev | x_k] = posterior variance + coef1^2 Var[x0 | x_k], so ancestral
    sampling is exact in distribution; ``bad_null_variance`` makes the null class output v = +1 instead.
    """

    def __init__(self, means, s=0.5, steps=250, learned=True, bad_null_variance=False):
        super().__init__()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.s, self.learned, self.bad_null_variance = s, learned, bad_null_variance
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.config = SimpleNamespace(family="DiT", null_class=len(means) - 1)
        self.base = base_diffusion()
        self.process = self.base.respace(space_timesteps(1000, steps))
        self.index = torch.zeros(1000, dtype=torch.long)
        self.index[self.process.timestep_map] = torch.arange(steps)
        self.calls, self.v_seen = [], []

    def forward(self, x, t, y):
        self.calls.append((x.shape[0], float(t[0])))
        k = torch.round(t.double() * 1000).long()
        col = lambda a: a.view(-1, 1, 1, 1)                         # noqa: E731
        abar, mu = col(self.base.alphas_cumprod[k]), col(self.means[y])
        d = abar * self.s ** 2 + 1 - abar
        eps = (1 - abar).sqrt() * (x.double() - abar.sqrt() * mu) / d
        if not self.learned:
            return eps
        i, p = self.index[k], self.process
        var = col(p.posterior_variance[i]) + col(p.posterior_mean_coef1[i]) ** 2 * self.s ** 2 * (1 - abar) / d
        low, high = col(p.posterior_log_variance_clipped[i]), col(p.log_betas[i])
        v = (2 * (var.log() - low) / (high - low) - 1).clamp(-1, 1)
        if self.bad_null_variance:
            v = torch.where(col(y) == self.config.null_class, torch.ones_like(v), v)
        self.v_seen.append(v[i > 0])
        return torch.cat([eps, v.expand_as(eps)], dim=1)


def _stats(x):
    return x.mean().item(), x.var().item()


def _noise(n=2000, seed=0):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ddpm_with_exact_epsilon_and_variance_recovers_the_gaussian():
    model = GaussianEpsilon([1.0, -0.5], s=0.5, steps=250)
    labels = torch.zeros(2000, dtype=torch.long)
    x = repa.sample(model, _noise(), labels, sampler="ddpm", steps=250, generator=torch.Generator().manual_seed(1))
    mean, var = _stats(x)
    assert mean == pytest.approx(1.0, abs=0.03) and var == pytest.approx(0.25, rel=0.06)
    v = torch.cat(model.v_seen)
    assert v.min() > -1 and v.max() < 1           # the exact variance lies inside the learned range
    assert len(model.calls) == 250 and model.calls[0][1] == 0.999 and model.calls[-1][1] == 0.0


def test_ddpm_with_fixed_large_variance_is_close_at_250_steps():
    model = GaussianEpsilon([-1.0, 0.0], s=0.6, learned=False)
    x = repa.sample(model, _noise(seed=2), torch.zeros(2000, dtype=torch.long), sampler="ddpm",
                    generator=torch.Generator().manual_seed(3))
    mean, var = _stats(x)
    assert mean == pytest.approx(-1.0, abs=0.03) and var == pytest.approx(0.36, rel=0.08)


def test_guidance_mixes_epsilon_and_keeps_the_conditional_variance():
    """Equal-variance Gaussians: guided epsilon is the epsilon of mean mu_u + w (mu_c - mu_u), same s."""
    model = GaussianEpsilon([1.0, -0.5], s=0.2, steps=50, bad_null_variance=True)
    labels = torch.zeros(2000, dtype=torch.long)
    x = repa.sample(model, _noise(seed=4), labels, sampler="ddpm", steps=50, cfg_scale=1.5,
                    generator=torch.Generator().manual_seed(5))
    mean, var = _stats(x)
    # the null half's variance (v = +1) would give about 0.050 here
    assert mean == pytest.approx(-0.5 + 1.5 * 1.5, abs=0.01) and var == pytest.approx(0.04, rel=0.08)
    assert all(n == 4000 for n, _ in model.calls)


def test_guidance_interval_is_read_on_timestep_over_1000():
    model = GaussianEpsilon([1.0, -0.5], steps=50)
    labels = torch.zeros(8, dtype=torch.long)
    repa.sample(model, _noise(8), labels, sampler="ddpm", steps=50, cfg_scale=2.0, guidance_interval=(0.0, 0.5))
    kept = sorted(space_timesteps(1000, 50), reverse=True)
    assert [t for _, t in model.calls] == [k / 1000 for k in kept]
    assert [n for n, _ in model.calls] == [16 if k <= 500 else 8 for k in kept]
    model.calls.clear()
    repa.sample(model, _noise(8), labels, sampler="ddpm", steps=50, cfg_scale=1.0)
    assert all(n == 8 for n, _ in model.calls)


def test_repa_sample_dispatches_to_ddpm_and_is_reproducible():
    model = GaussianEpsilon([1.0, -0.5], steps=20)
    labels = torch.zeros(16, dtype=torch.long)
    a = repa.sample(model, _noise(16), labels, sampler="ddpm", steps=20, cfg_scale=1.5,
                    guidance_interval=(0.0, 0.7), generator=torch.Generator().manual_seed(0))
    guided = GuidedModel(model, labels, cfg_scale=1.5, interval=(0.0, 0.7), time_dtype=torch.float64)
    b = ddpm(guided, _noise(16), ddpm_times(20), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float64


def test_ddpm_refuses_velocity_models():
    sit = repa.build_model(repa.model_config("SiT-S/2", depth=1, hidden_size=32, num_heads=2, input_size=4,
                                             encoder_depth=1, encoder_dims=()))
    with pytest.raises(ValueError, match="velocity"):
        repa.sample(sit, torch.randn(1, 4, 4, 4), torch.tensor([0]), sampler="ddpm", steps=5)
