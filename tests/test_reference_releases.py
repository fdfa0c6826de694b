"""Released SiT and DiT checkpoints against the authors' own code (optional).

These run github.com/willisma/SiT (``models.py``, ``transport/``; needs timm and torchdiffeq) and
github.com/facebookresearch/DiT (``models.py``, ``diffusion/``; needs timm) next to repa. Nothing of either is in
this repository: point ``REPA_SIT_REPO`` / ``REPA_DIT_REPO`` at a checkout and install the packages to run them;
they skip otherwise. A reference network with random weights is saved as a bare state dict named like the release
and loaded through ``repa.load_model``; then

- SiT: ``repa.sample(euler, steps=N - 1)`` equals the reference ``Sampler.sample_ode(sampling_method="euler",
  num_steps=N)``, with and without its ``forward_with_cfg`` guidance, to 1e-4 of the sample scale;
- DiT: ``repa.sample(ddpm, steps=S)`` with guidance equals ``create_diffusion(str(S)).p_sample_loop`` on its
  ``forward_with_cfg``, given the same start noise and the same step noise (the reference draws its step noise with
  ``torch.randn_like``, which the test feeds with the noise repa's sampler draws).

``tests/test_released.py`` holds the same comparisons against the references' definitions written out, in the
default suite.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import repa

SIT_REPO, DIT_REPO = os.environ.get("REPA_SIT_REPO"), os.environ.get("REPA_DIT_REPO")
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Many tiny ops: one thread (the conftest fixture) is faster and immune to a busy machine."""


def _load(name: str, path: Path, package: bool = False):
    """Import ``path`` (a module file, or a package folder) under ``name``: both repositories have a top-level
    ``models.py``, so neither goes on sys.path."""
    location = path / "__init__.py" if package else path
    spec = importlib.util.spec_from_file_location(name, location,
                                                  submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _randomised(net):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 8, 8, generator=gen), torch.tensor([0, 7, 9])


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# The reference networks: 64 wide with one head (load_model infers 64-d heads), learned sigma, 10 classes + null.
NET = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=1, class_dropout_prob=0.1,
           num_classes=NUM_CLASSES, learn_sigma=True)


@pytest.mark.skipif(not SIT_REPO, reason="set REPA_SIT_REPO to a checkout of willisma/SiT (needs timm, torchdiffeq)")
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_released_sit_euler_equals_the_reference_ode_sampler(tmp_path, cfg_scale):
    models = _load("sit_reference_models", Path(SIT_REPO) / "models.py")
    transport = _load("sit_reference_transport", Path(SIT_REPO) / "transport", package=True)
    net = _randomised(models.SiT(**NET))
    torch.save(net.state_dict(), tmp_path / "SiT-XL-2-256x256.pt")
    loaded = repa.load_model(tmp_path / "SiT-XL-2-256x256.pt")
    z, y = _inputs()
    num_steps = 26
    sample_fn = transport.Sampler(transport.create_transport("Linear", "velocity")).sample_ode(
        sampling_method="euler", num_steps=num_steps)
    with torch.no_grad():
        if cfg_scale == 1.0:
            want = sample_fn(z, net.forward, y=y)[-1]
        else:
            y_null = torch.full_like(y, NUM_CLASSES)
            want = sample_fn(torch.cat([z, z]), net.forward_with_cfg, y=torch.cat([y, y_null]),
                             cfg_scale=cfg_scale)[-1].chunk(2)[0]
    got = repa.sample(loaded, z, y, sampler="euler", steps=num_steps - 1, cfg_scale=cfg_scale)
    assert want.abs().max() > 0.5 and _rel(got, want) < 1e-4
    if cfg_scale != 1.0:                      # the reference guides 3 channels; all four is another sampler
        every = repa.sample(loaded, z, y, sampler="euler", steps=num_steps - 1, cfg_scale=cfg_scale,
                            guided_channels="all")
        assert _rel(every, want) > 1e-3


@pytest.mark.skipif(not DIT_REPO, reason="set REPA_DIT_REPO to a checkout of facebookresearch/DiT (needs timm)")
def test_released_dit_ddpm_with_guidance_equals_the_reference_p_sample_loop(tmp_path, monkeypatch):
    models = _load("dit_reference_models", Path(DIT_REPO) / "models.py")
    diffusion = _load("dit_reference_diffusion", Path(DIT_REPO) / "diffusion", package=True)
    net = _randomised(models.DiT(**NET))
    torch.save(net.state_dict(), tmp_path / "DiT-XL-2-256x256.pt")
    loaded = repa.load_model(tmp_path / "DiT-XL-2-256x256.pt")
    z, y = _inputs()
    steps, cfg_scale, seed = 25, 4.0, 11
    gen = torch.Generator().manual_seed(seed)        # the step noise repa draws: one normal draw per noisy step
    noises = [torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(steps - 1)]
    feed = iter([torch.cat([n, n]) for n in noises] + [torch.zeros(2 * len(z), *z.shape[1:])])
    randn_like = torch.randn_like
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: next(feed).to(x.dtype) if x.ndim == 4
                        else randn_like(x, **kw))
    y_null = torch.full_like(y, NUM_CLASSES)
    zz = torch.cat([z, z])
    with torch.no_grad():
        want = diffusion.create_diffusion(str(steps)).p_sample_loop(
            net.forward_with_cfg, zz.shape, zz, clip_denoised=False,
            model_kwargs=dict(y=torch.cat([y, y_null]), cfg_scale=cfg_scale), progress=False, device="cpu")
    monkeypatch.undo()
    assert next(feed, None) is None                                   # every step drew its noise
    want = want.chunk(2)[0]

    def ours(**kwargs):
        return repa.sample(loaded, z, y, sampler="ddpm", steps=steps, cfg_scale=cfg_scale,
                           generator=torch.Generator().manual_seed(seed), **kwargs)

    assert want.abs().max() > 0.5 and _rel(ours(), want) < 1e-4
    assert _rel(ours(guided_channels="all"), want) > 1e-3
