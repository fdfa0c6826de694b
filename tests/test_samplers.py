"""Samplers against a linear-Gaussian toy problem whose velocity field is known in closed form."""
from types import SimpleNamespace

import pytest
import torch

import repa
from repa.samplers import sample


class GaussianVelocity(torch.nn.Module):
    """Exact velocity of the linear path for data x0 ~ N(mu, s^2 I) (per class mean mu[y]).

    x_t = (1-t) x0 + t e is Gaussian with mean (1-t) mu and variance (1-t)^2 s^2 + t^2, so
    E[e | x_t] = t (x_t - (1-t) mu) / var_t and E[x0 | x_t] = mu + (1-t) s^2 (x_t - (1-t) mu) / var_t.
    """

    def __init__(self, means, s=0.5):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.s = s
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.config = SimpleNamespace(null_class=len(means) - 1)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        mu = self.means[y].view(-1, *([1] * (x.ndim - 1)))
        t = t.double().view(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        centred = x.double() - (1 - t) * mu
        e_hat = t * centred / var
        x0_hat = mu + (1 - t) * self.s ** 2 * centred / var
        return e_hat - x0_hat


def _exact(model, noise, labels):
    """The exact ODE flow maps noise z to mu + s z."""
    mu = model.means[labels].view(-1, 1, 1, 1)
    return mu + model.s * noise.double()


@pytest.fixture
def toy():
    return GaussianVelocity([2.0, -1.0, 0.0])


def _errors(toy, sampler, steps_list):
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    exact = _exact(toy, noise, labels)
    return [(sample(toy, noise, labels, sampler=sampler, steps=n) - exact).abs().max().item() for n in steps_list]


def test_euler_converges_at_first_order(toy):
    errors = _errors(toy, "euler", [10, 20, 40, 80])
    assert errors[-1] < 0.04
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.7 < coarse / fine < 2.3        # halving the step halves the error


def test_heun_converges_at_second_order(toy):
    errors = _errors(toy, "heun", [10, 20, 40])
    assert errors[-1] < 3e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.2 < coarse / fine < 4.8        # halving the step quarters the error


def test_sde_samples_match_target_mean_and_variance(toy):
    n = 4000
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, 1, 1, generator=gen, dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    x = sample(toy, noise, labels, sampler="sde", steps=250, generator=gen).flatten()
    assert abs(x.mean().item() - 2.0) < 0.05
    assert abs(x.std().item() - 0.5) < 0.05
    assert len(toy.calls) == 250                # NFE = steps, no guidance doubling


def test_guidance_scale_one_equals_no_guidance_and_evaluates_once(toy):
    noise = torch.randn(8, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1] * 4)
    plain = sample(toy, noise, labels, sampler="euler", steps=10)
    toy.calls.clear()
    guided = sample(toy, noise, labels, sampler="euler", steps=10, cfg_scale=1.0, guidance_interval=(0.0, 1.0))
    assert torch.equal(plain, guided) and toy.calls == [8] * 10


def test_guidance_interval_limits_where_the_null_half_runs(toy):
    noise = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    sample(toy, noise, labels, sampler="euler", steps=10, cfg_scale=1.8, guidance_interval=(0.0, 0.7))
    times = torch.linspace(1, 0, 11, dtype=torch.float64)[:-1]
    assert toy.calls == [8 if t <= 0.7 else 4 for t in times.tolist()]


def test_heun_step_is_guided_by_its_start_time(toy):
    """Both evaluations of a Heun step follow the step's start time (as the reference sampler does): the step
    from 0.8 to 0.7 is unguided in its corrector too, although 0.7 lies in the interval."""
    noise = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    sample(toy, noise, torch.tensor([0, 1, 0, 1]), sampler="heun", steps=10, cfg_scale=1.8,
           guidance_interval=(0.0, 0.7))
    starts = torch.linspace(1, 0, 11, dtype=torch.float64)[:-1].tolist()
    expected = []
    for i, t in enumerate(starts):
        expected += [8 if t <= 0.7 else 4] * (2 if i < len(starts) - 1 else 1)
    assert toy.calls == expected


def test_guidance_extrapolates_from_null_class(toy):
    # null class mean 0, class 0 mean 2: w = 2 pushes the result to 2 * 2 - 0 = 4 (plus scaled noise)
    noise = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    out = sample(toy, noise, torch.tensor([0]), sampler="heun", steps=50, cfg_scale=2.0)
    assert abs(out.item() - 4.0) < 1e-2


@pytest.mark.parametrize("interval", [(-0.1, 0.5), (0.8, 0.2), (0.0, 1.5)])
def test_bad_guidance_interval_is_rejected(toy, interval):
    with pytest.raises(ValueError, match="guidance interval"):
        sample(toy, torch.zeros(1, 1, 1, 1), torch.tensor([0]), cfg_scale=1.5, guidance_interval=interval)


def test_unknown_sampler_lists_known(toy):
    with pytest.raises(ValueError, match="euler"):
        sample(toy, torch.zeros(1, 1, 1, 1), torch.tensor([0]), sampler="dpm")


def test_public_api_exposes_sample():
    assert repa.sample is sample
