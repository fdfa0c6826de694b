"""Released checkpoints against their own samplers, written here from the reference definitions.

- willisma/SiT (``models.py``, ``transport/``): x_t = t x + (1 - t) e, the network predicts v = x - e, its
  ``forward`` keeps the first C of its 2C (learned-sigma) outputs, ``forward_with_cfg`` guides the first 3 channels,
  and ``Sampler.sample_ode(sampling_method="euler", num_steps=N)`` integrates dx/dt = v on
  ``linspace(0, 1, N)`` (torchdiffeq's fixed-grid Euler: x += (t1 - t0) v(x, t0)).
- facebookresearch/DiT (``models.py``, ``diffusion/``): ``forward_with_cfg`` guides the first 3 epsilon channels,
  ``p_sample_loop`` runs the respaced process (``space_timesteps``), with the learned-range variance, from the
  last timestep to 0, adding noise at every step but the last.

A tiny network of the released layout (2C outputs, no projector) is saved as a bare state dict named like the
release and loaded with ``repa.load_model``; ``repa.sample`` must give the reference's samples. The same
comparison against the reference code itself is in ``tests/test_reference_releases.py`` (opt-in).
"""
import argparse
import dataclasses
import warnings

import numpy as np
import pytest
import torch

import repa
from repa.config import ConfigError
from repa.guidance import default_guided_channels
from repa.models import ReleasedSiT, SiT, build_model, model_config
from repa.models.dit import DiT

NUM_CLASSES = 10          # + the null class (index 10), as class dropout > 0 gives


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Many tiny ops: one thread (the conftest fixture) is faster and immune to a busy machine."""


def _network(family: str, seed: int = 0) -> SiT:
    """A tiny network of the released layout (learned sigma, no projector) off the zero init, in repa's raw SiT
    class: its forward is the reference network's (same layers), before any convention is applied. One head: the
    head count of a 64-wide network is not in its shapes, and load_model infers 64-d heads."""
    torch.manual_seed(seed)
    cfg = model_config(f"{family}-S/2", depth=2, hidden_size=64, num_heads=1, input_size=8, in_channels=4,
                       num_classes=NUM_CLASSES, encoder_depth=1, encoder_dims=(), learn_sigma=True,
                       prediction="velocity")
    net = SiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _save(net, path):
    torch.save(net.state_dict(), path)
    return path


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _inputs(batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=gen), torch.tensor([0, 7, 9][:batch])


# ---- willisma/SiT, from its definition ---------------------------------------------------------------------------

def sit_forward(net, x, t, y):
    """SiT.forward: the network's output with the learned-sigma half chunked off."""
    out = net(x, t, y)
    return out.chunk(2, dim=1)[0]


def sit_forward_with_cfg(net, x, t, y, cfg_scale):
    """SiT.forward_with_cfg: the first 3 channels guided, the rest from each half's own output."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = sit_forward(net, combined, t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


@torch.no_grad()
def sit_euler_ode(model_fn, z, num_steps, **model_kwargs):
    """Sampler(create_transport("Linear", "velocity")).sample_ode(sampling_method="euler", num_steps) on z:
    t = linspace(0, 1, num_steps) (velocity + Linear: t0 = 0, t1 = 1), x += (t1 - t0) * v(x, t0)."""
    ts = torch.linspace(0, 1, num_steps)
    x = z
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * model_fn(x, torch.ones(x.size(0)) * t0, **model_kwargs)
    return x


def test_released_sit_is_detected_and_converted_at_every_call(tmp_path):
    net = _network("SiT")
    loaded = repa.load_model(_save(net, tmp_path / "SiT-XL-2-256x256.pt"))
    assert isinstance(loaded.model, ReleasedSiT) and loaded.config.time_convention == "noise_at_0"
    assert loaded.config.prediction == "velocity" and loaded.config.learn_sigma
    x, y = _inputs()
    t = torch.tensor([0.1, 0.5, 0.93])
    with torch.no_grad():
        ours = loaded.model.forward_features(x, t, y, layers=(1, 2))
        raw = net.forward_features(x, 1 - t, y, layers=(1, 2))
    # repa's t is willisma/SiT's 1 - t, the velocity changes sign, the learned-sigma channels are dropped
    assert ours.prediction.shape == (3, 4, 8, 8)
    assert torch.equal(ours.prediction, -raw.prediction[:, :4])
    for layer in (1, 2):                                  # the analysis reads the tokens at the same noise level
        assert torch.equal(ours.hidden[layer], raw.hidden[layer])
    assert torch.equal(loaded.model(x, t, y), ours.prediction)


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_euler_samples_of_a_released_sit_equal_its_own_euler_integration(tmp_path, cfg_scale):
    """repa.sample(euler, steps=N - 1) on the converted network = willisma/SiT's Euler ODE with num_steps=N, with and
    without its guidance (first 3 channels); to 1e-4 of the sample scale."""
    net = _network("SiT")
    loaded = repa.load_model(_save(net, tmp_path / "SiT-XL-2-256x256.pt"))
    z, y = _inputs()
    num_steps = 26
    if cfg_scale == 1.0:
        want = sit_euler_ode(lambda x, t, y: sit_forward(net, x, t, y), z, num_steps, y=y)
    else:
        y_null = torch.full_like(y, NUM_CLASSES)
        want = sit_euler_ode(lambda x, t, y: sit_forward_with_cfg(net, x, t, y, cfg_scale), torch.cat([z, z]),
                             num_steps, y=torch.cat([y, y_null])).chunk(2)[0]
    got = repa.sample(loaded, z, y, sampler="euler", steps=num_steps - 1, cfg_scale=cfg_scale)
    assert want.abs().max() > 0.5 and _rel(got, want) < 1e-4
    # the conversion and the channel choice matter at this tolerance
    as_repa = repa.load_model(tmp_path / "SiT-XL-2-256x256.pt", origin="repa")
    assert type(as_repa.model) is SiT and as_repa.config.time_convention == "data_at_0"
    assert _rel(repa.sample(as_repa, z, y, sampler="euler", steps=num_steps - 1, cfg_scale=cfg_scale), want) > 0.1
    if cfg_scale != 1.0:
        every = repa.sample(loaded, z, y, sampler="euler", steps=num_steps - 1, cfg_scale=cfg_scale,
                            guided_channels="all")
        assert _rel(every, want) > 1e-3


# ---- facebookresearch/DiT, from its definition -------------------------------------------------------------------

def dit_space_timesteps(num_timesteps, section_counts):
    """respace.space_timesteps for a list of section counts."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = (size - 1) / (section_count - 1) if section_count > 1 else 1
        cur_idx, taken = 0.0, []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


class DiTDiffusion:
    """create_diffusion(str(steps)): linear betas, SpacedDiffusion, epsilon mean, learned-range variance."""

    def __init__(self, steps, num_timesteps=1000):
        scale = 1000 / num_timesteps
        base = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
        use = dit_space_timesteps(num_timesteps, [steps])
        last, betas, self.timestep_map = 1.0, [], []
        for i, alpha_cumprod in enumerate(np.cumprod(1.0 - base)):
            if i in use:
                betas.append(1 - alpha_cumprod / last)
                last = alpha_cumprod
                self.timestep_map.append(i)
        b = np.array(betas, dtype=np.float64)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        self.num_timesteps, self.betas = len(b), b
        self.posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)

    def p_sample(self, model, x, i, noise, **model_kwargs):
        """p_mean_variance (LEARNED_RANGE, EPSILON, no clipping) then mean + [i > 0] exp(log var / 2) noise."""
        B, C = x.shape[:2]
        ts = torch.full((B,), self.timestep_map[i], dtype=torch.long)        # _WrappedModel's timestep_map
        model_output = model(x, ts, **model_kwargs)
        eps, model_var_values = torch.split(model_output, C, dim=1)
        min_log, max_log = self.posterior_log_variance_clipped[i], np.log(self.betas[i])
        frac = (model_var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self.sqrt_recip_alphas_cumprod[i] * x - self.sqrt_recipm1_alphas_cumprod[i] * eps
        mean = self.posterior_mean_coef1[i] * pred_xstart + self.posterior_mean_coef2[i] * x
        return mean + (1.0 if i != 0 else 0.0) * torch.exp(0.5 * model_log_variance) * noise

    @torch.no_grad()
    def p_sample_loop(self, model, z, noises, **model_kwargs):
        x = z
        for k, i in enumerate(reversed(range(self.num_timesteps))):
            x = self.p_sample(model, x, i, noises[k], **model_kwargs)
        return x


def dit_forward_with_cfg(net, x, t, y, cfg_scale):
    """DiT.forward_with_cfg: the first 3 epsilon channels guided; the 4th and the variance from each half. DiT's
    forward embeds the timestep index: the raw network called with the integer timestep."""
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = net(combined.float(), t.float(), y).double()
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def test_ddpm_samples_of_a_released_dit_with_guidance_equal_its_own_sampler(tmp_path):
    """repa.sample(ddpm) with guidance = DiT's p_sample_loop(forward_with_cfg) given the same start and step noise."""
    net = _network("DiT", seed=3)
    loaded = repa.load_model(_save(net, tmp_path / "DiT-XL-2-256x256.pt"))
    assert isinstance(loaded.model, DiT) and loaded.config.prediction == "epsilon"
    assert default_guided_channels(loaded.model, 4) == 3
    z, y = _inputs(seed=5)
    steps, cfg_scale, seed = 25, 4.0, 11
    gen = torch.Generator().manual_seed(seed)        # the step noise repa draws: one normal draw per noisy step
    noises = [torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(steps - 1)]
    noises = [torch.cat([n, n]) for n in noises] + [torch.zeros(2 * len(z), *z.shape[1:], dtype=torch.float64)]
    y_null = torch.full_like(y, NUM_CLASSES)
    want = DiTDiffusion(steps).p_sample_loop(lambda x, t, y: dit_forward_with_cfg(net, x, t, y, cfg_scale),
                                             torch.cat([z, z]).double(), noises, y=torch.cat([y, y_null]))
    want = want.chunk(2)[0]

    def ours(**kwargs):
        return repa.sample(loaded, z, y, sampler="ddpm", steps=steps, cfg_scale=cfg_scale,
                           generator=torch.Generator().manual_seed(seed), **kwargs)

    got = ours()
    assert want.abs().max() > 0.5 and _rel(got, want) < 1e-5
    assert torch.equal(ours(guided_channels=3), got)
    assert _rel(ours(guided_channels="all"), want) > 1e-3          # guiding the 4th channel too is visible


# ---- the origin rule ---------------------------------------------------------------------------------------------

def test_origin_rule_and_its_override(tmp_path):
    sit, dit = _network("SiT"), _network("DiT")
    state = sit.state_dict()
    # a bare learned-sigma state dict without a declared family: willisma/SiT's, with a warning
    with pytest.warns(UserWarning, match="origin='dit'"):
        assert repa.load_model(_save(sit, tmp_path / "weights.pt")).config.time_convention == "noise_at_0"
    assert isinstance(repa.load_model(tmp_path / "weights.pt", origin="dit").model, DiT)
    # willisma/SiT's training checkpoint (model/ema/opt/args, args.model = "SiT-XL/2")
    args = argparse.Namespace(model="SiT-XL/2", path_type="Linear", prediction="velocity", loss_weight=None)
    torch.save({"model": state, "ema": state, "opt": {}, "args": args}, tmp_path / "0050000.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(repa.load_model(tmp_path / "0050000.pt").model, ReleasedSiT)
    # one trained on another path is refused rather than misread
    gvp = argparse.Namespace(**{**vars(args), "path_type": "GVP"})
    torch.save({"model": state, "ema": state, "opt": {}, "args": gvp}, tmp_path / "0060000.pt")
    with pytest.raises(ConfigError, match="path_type='GVP'"):
        repa.load_model(tmp_path / "0060000.pt")
    # REPA's SiT: C outputs and a projector, repa's convention; also when named SiT-...
    cfg = dataclasses.replace(sit.config, learn_sigma=False, encoder_dims=(16,))
    repa_net = build_model(cfg)
    torch.save({"model": repa_net.state_dict(), "ema": repa_net.state_dict(), "opt": {}, "steps": 5,
                "args": argparse.Namespace(model="SiT-XL/2", enc_type="dinov2-vit-b", proj_coeff=0.5)},
               tmp_path / "SiT-repa.pt")
    loaded = repa.load_model(tmp_path / "SiT-repa.pt")
    assert type(loaded.model) is SiT and loaded.config.time_convention == "data_at_0"
    # DiT by name, and the override the other way; an unknown origin
    assert isinstance(repa.load_model(_save(dit, tmp_path / "DiT-XL-2-256x256.pt")).model, DiT)
    assert isinstance(repa.load_model(tmp_path / "DiT-XL-2-256x256.pt", origin="sit").model, ReleasedSiT)
    with pytest.raises(ValueError, match="origin must be one of"):
        repa.load_model(tmp_path / "DiT-XL-2-256x256.pt", origin="SiT")


def test_guided_channels_choice_is_checked(tmp_path, capsys):
    from repa.cli import parse_command
    path = _save(_network("DiT"), tmp_path / "DiT-XL-2-256x256.pt")
    loaded = repa.load_model(path)
    z, y = _inputs()
    for bad in (0, 5, "three", True):
        with pytest.raises(ValueError, match="guided_channels"):
            repa.sample(loaded, z, y, sampler="ddpm", steps=2, cfg_scale=2.0, guided_channels=bad)
    from repa.fields import UsageError
    argv = [str(path), "--num", "1", "--out", str(tmp_path / "out")]
    assert parse_command("sample", argv).sampling.guided_channels is None
    assert parse_command("sample", argv + ["--guided-channels", "all"]).sampling.guided_channels == "all"
    assert parse_command("sample", argv + ["--guided-channels", "2", "--origin", "sit"]).sampling.guided_channels == 2
    with pytest.raises(UsageError, match="--guided-channels"):
        parse_command("sample", argv + ["--guided-channels", "three"])
