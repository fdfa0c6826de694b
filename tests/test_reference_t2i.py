"""Against the reference's text-to-image code itself (optional): sihyun-yu/REPA ``models/mmdit.py`` (which imports
einops and transformers) and ``samplers_t2i.py``.

Point ``REPA_REFERENCE_REPO`` at a checkout and install einops to run them; they skip otherwise. A reference
``MMDiT`` with random weights gives its state dict, which must load strictly into repa's MMDiT; then the velocity,
the projector outputs and the Euler sampler with guidance against the empty context on an interval must agree to
float precision (docs/TEXT_TO_IMAGE.md records the figures).
"""
import os
import sys

import pytest
import torch

import repa
from repa.conditions import TextContext
from repa.models import build_model, model_config

REPO = os.environ.get("REPA_REFERENCE_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set REPA_REFERENCE_REPO to a checkout of sihyun-yu/REPA "
                                                 "(needs einops) to compare against the reference code")


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("einops")
    sys.path.insert(0, os.path.abspath(REPO))
    for cached in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[cached]
    from models import mmdit
    import samplers_t2i
    return mmdit, samplers_t2i


def pair(ref, input_size):
    """(reference MMDiT, repa MMDiT with its state dict loaded strictly); the reference's table is built for
    input_size 32 (16 x 16 patches) and cropped to smaller inputs, as repa's."""
    torch.manual_seed(0)
    net = ref[0].MMDiT(input_size=32, depth=3, encoder_depth=2, z_dims=[32], projector_dim=48)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = build_model(model_config("MMDiT-24x768/2", depth=3, hidden_size=96, num_heads=3, input_size=input_size,
                                    encoder_depth=2, encoder_dims=(32,), projector_dim=48))
    ours.load_state_dict(net.state_dict(), strict=True)
    return net.eval(), ours.eval()


@pytest.mark.parametrize("input_size", [32, 8])
def test_reference_state_dict_gives_identical_outputs(ref, input_size):
    net, ours = pair(ref, input_size)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, input_size, input_size, generator=gen)
    t, ctx = torch.rand(3, generator=gen), torch.randn(3, 77, 768, generator=gen)
    with torch.no_grad():
        want, zs = net(x, t, context=ctx)
        got = ours.forward_features(x, t, ctx, project=True)
    assert (want - got.prediction).abs().max() <= 1e-5
    assert (zs[0] - got.projected[0]).abs().max() <= 1e-5


def test_reference_euler_sampler_with_empty_context_guidance(ref):
    net, ours = pair(ref, 8)
    gen = torch.Generator().manual_seed(2)
    noise, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 768, generator=gen)
    empty = torch.randn(77, 768, generator=gen)
    want = ref[1].euler_sampler(net, noise, ctx, empty.expand(2, 77, 768), num_steps=6, cfg_scale=4.0,
                                guidance_low=0.3, guidance_high=0.7)
    got = repa.sample(ours, noise, ctx, sampler="euler", steps=6, cfg_scale=4.0, guidance_interval=(0.3, 0.7),
                      condition=TextContext(0.1).bind(empty))
    assert (want.float() - got).abs().max() <= 1e-5


def test_reference_training_checkpoint_loads_through_load_model(ref, tmp_path):
    import argparse
    net, _ = pair(ref, 32)
    state = net.state_dict()
    path = tmp_path / "0000007.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 7,
                "args": argparse.Namespace(resolution=256, encoder_depth=2, cfg_prob=0.1)}, path)
    loaded = repa.load_model(path)
    gen = torch.Generator().manual_seed(4)
    x, t, ctx = torch.randn(2, 4, 32, 32, generator=gen), torch.rand(2, generator=gen), torch.randn(2, 77, 768,
                                                                                                 generator=gen)
    with torch.no_grad():
        assert (net(x, t, context=ctx)[0] - loaded.model(x, t, ctx)).abs().max() <= 1e-5
    assert loaded.config.name == "MMDiT-3x96/2" and loaded.config.num_heads == 3 and loaded.step == 7
