"""Against the reference implementation itself (optional).

These run the authors' code (github.com/sihyun-yu/REPA: ``models/sit.py``, ``loss.py``, ``samplers.py``, which
import timm) next to repa's. Nothing of it is in this repository: point ``REPA_REFERENCE_REPO`` at a checkout and
install timm to run them; they skip otherwise. A reference SiT with random weights is saved in the reference
checkpoint layout (``model``/``ema``/``opt``/``args``/``steps``) and loaded through ``repa.load_model``; then the
velocity and projector outputs, the REPA loss and the Euler sampler with guidance on an interval must agree.
"""
import argparse
import os
import sys

import pytest
import torch

import repa
from repa.config import ObjectiveConfig
from repa.objectives import repa_loss

REPO = os.environ.get("REPA_REFERENCE_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set REPA_REFERENCE_REPO to a checkout of sihyun-yu/REPA "
                                                 "(needs timm) to compare against the reference code")


@pytest.fixture(scope="module")
def ref():
    sys.path.insert(0, os.path.abspath(REPO))
    import loss
    import samplers
    from models import sit
    return argparse.Namespace(sit=sit, loss=loss, samplers=samplers)


@pytest.fixture()
def pair(ref, tmp_path):
    """(reference SiT, repa SiT loaded from the reference checkpoint); 1000 classes: its samplers hard-code the null
    class 1000."""
    torch.manual_seed(0)
    net = ref.sit.SiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, decoder_hidden_size=64, depth=3,
                      num_heads=1, encoder_depth=2, z_dims=[32], projector_dim=48, num_classes=1000,
                      class_dropout_prob=0.1, qk_norm=False, fused_attn=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    state = net.state_dict()
    path = tmp_path / "0000003.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 3,
                "args": argparse.Namespace(model="SiT-custom/2", encoder_depth=2, num_classes=1000, cfg_prob=0.1,
                                           qk_norm=False, fused_attn=True, path_type="linear")}, path)
    return net, repa.load_model(path)


def _inputs(batch=4):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.rand(batch, generator=gen),
            torch.randint(0, 1000, (batch,), generator=gen))


def test_reference_checkpoint_gives_identical_outputs(pair):
    net, ours = pair
    x, t, y = _inputs()
    with torch.no_grad():
        v_ref, zs_ref = net(x, t, y)
        out = ours.model.forward_features(x, t, y, project=True)
    assert out.prediction.abs().max() > 0
    assert torch.allclose(out.prediction, v_ref, atol=1e-6, rtol=0)
    assert torch.allclose(out.projected[0], zs_ref[0], atol=1e-6, rtol=0)


def test_repa_loss_equals_reference_siloss(ref, pair):
    net, ours = pair
    x0, _, y = _inputs()
    tokens = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)                       # SILoss draws t then the noise from the global generator
    denoise, proj = ref.loss.SILoss(path_type="linear")(net, x0, dict(y=y), zs=[tokens])
    torch.manual_seed(3)
    t = torch.rand(4, 1, 1, 1).flatten()
    noise = torch.randn_like(x0)
    got = repa_loss(ours.model.forward_features, x0, y, [tokens], ObjectiveConfig(path="linear", proj_coeff=0.5), t=t, noise=noise)
    assert torch.allclose(got.terms["denoise_loss"], denoise.mean(), rtol=1e-5, atol=0)
    assert torch.allclose(got.terms["align_loss"], proj.mean(), rtol=1e-5, atol=0)
    assert torch.allclose(got.total, denoise.mean() + 0.5 * proj.mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("heun", [False, True])
def test_euler_and_heun_with_guidance_interval_equal_the_reference_sampler(ref, pair, heun):
    net, ours = pair
    x, _, y = _inputs(3)
    want = ref.samplers.euler_sampler(net, x, y, num_steps=10, heun=heun, cfg_scale=1.8, guidance_low=0.0,
                                      guidance_high=0.7)
    with torch.no_grad():
        got = repa.sample(ours, x, y, sampler="heun" if heun else "euler", steps=10, cfg_scale=1.8,
                          guidance_interval=(0.0, 0.7))
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0)


def test_sde_with_guidance_equals_the_reference_euler_maruyama_sampler(ref, pair):
    """Same global-generator noise draws (one float64 normal per step), so the paths must coincide."""
    net, ours = pair
    x, _, y = _inputs(3)
    torch.manual_seed(5)
    want = ref.samplers.euler_maruyama_sampler(net, x, y, num_steps=20, cfg_scale=1.8, guidance_low=0.0,
                                               guidance_high=0.7)
    torch.manual_seed(5)
    with torch.no_grad():
        got = repa.sample(ours, x, y, sampler="sde", steps=20, cfg_scale=1.8, guidance_interval=(0.0, 0.7))
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0)
