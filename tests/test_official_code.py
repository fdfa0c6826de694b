"""Against the successors' official code itself (optional; docs/VARIANTS.md names the commits read).

Nothing of that code is in this repository. Point an environment variable at a snapshot of each repository to run
its tests; they skip otherwise:

- ``SRA_OFFICIAL_REPO``: vvvvvjdy/SRA (``SiT-SRA/loss.py``, ``SiT-SRA/models/sit.py``);
- ``IREPA_OFFICIAL_REPO``: End2End-Diffusion/iREPA (``ldm/models/sit.py``, ``ldm/utils.py``);
- ``HASTE_OFFICIAL_REPO``: NUS-HPC-AI-Lab/HASTE (``models/sit.py``, ``loss.py``);
- ``REG_OFFICIAL_REPO``: Martinser/REG (``models/sit.py``, ``samplers.py``).

The loss functions need torch only; the networks import timm (``from timm.models.vision_transformer import
PatchEmbed, Attention, Mlp``), so those tests also skip without it. Each official network is built with random
weights, saved in its training checkpoint layout and loaded through ``repa.load_model``; then the same random inputs
go through both.
"""
import argparse
import importlib
import os
import sys
import warnings

import pytest
import torch

import repa
from repa.losses import self_alignment_loss
from repa.models.sit import SRAHead
from repa.samplers import sample_with_class_token

REPOS = {name: os.environ.get(f"{name.upper()}_OFFICIAL_REPO") for name in ("sra", "irepa", "haste", "reg")}
SUBDIR = {"sra": "SiT-SRA", "irepa": "ldm", "haste": "", "reg": ""}


def _official(name: str, module: str):
    """Module ``module`` of the official code of ``name`` (each repository's own ``models``/``loss`` packages, so
    the import caches are cleared between repositories)."""
    if not REPOS[name]:
        pytest.skip(f"set {name.upper()}_OFFICIAL_REPO to a snapshot of the official {name} code")
    if module.startswith("models"):
        pytest.importorskip("timm")
    root = os.path.join(os.path.abspath(REPOS[name]), SUBDIR[name])
    for cached in [m for m in sys.modules if m in ("loss", "samplers", "models", "utils") or m.startswith("models.")]:
        del sys.modules[cached]
    sys.path.insert(0, root)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(root)


def _perturbed(net):
    """Random weights everywhere, the zero-initialised adaLN and output layers included, so every path counts."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _save(tmp_path, net, **args):
    state = net.state_dict()
    path = tmp_path / "official.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 1,
                "args": argparse.Namespace(model="SiT-custom/2", num_classes=1000, cfg_prob=0.1, num_heads=2,
                                           path_type="linear", **args)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return repa.load_model(path)


BASE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, decoder_hidden_size=64, depth=4, num_heads=2,
            num_classes=1000, use_cfg=True, qk_norm=False, fused_attn=False)


def _inputs(batch=3):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.rand(batch, generator=gen),
            torch.randint(0, 1000, (batch,), generator=gen))


# ---- SRA ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,official_kind", [("smooth_l1", "sml1"), ("cosine", "cos")])
def test_sra_loss_equals_the_official_simpleloss_with_per_channel_offsets(kind, official_kind):
    loss = _official("sra", "loss")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 16, 32, generator=gen) + 2 * torch.randn(4, 1, 32, generator=gen)
    b = 0.1 * torch.randn(4, 16, 32, generator=gen) + torch.randn(4, 1, 32, generator=gen)
    want = loss.Simpleloss()(a, b, loss_type=official_kind).mean()     # train.py: align_loss.mean()
    got = self_alignment_loss([a], [b], kind).mean()
    print(f"{kind}: max abs difference {float((got - want).abs()):.3g}")
    assert float((got - want).abs()) <= 1e-6, float((got - want).abs())


def test_sra_head_and_checkpoint_equal_the_official_network(tmp_path):
    sit = _official("sra", "models.sit")
    net = _perturbed(sit.SiT(**BASE))
    head = SRAHead(64, 64)
    head.load_state_dict({k.removeprefix("ap_head."): v for k, v in net.state_dict().items()
                          if k.startswith("ap_head.")}, strict=True)
    tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(head(tokens), net.ap_head(tokens), rtol=0, atol=1e-6)
    loaded = _save(tmp_path, net, block_out_s=2, block_out_t=3)
    x, t, y = _inputs()
    with torch.no_grad():
        v_ref, hidden_ref, _ = net(x, t, y, ad=3)               # eval mode: block 3's raw tokens (the EMA's target)
        out = loaded.model.forward_features(x, t, y, layers=(3,))
    torch.testing.assert_close(out.prediction, v_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.hidden[3], hidden_ref, rtol=0, atol=1e-5)


# ---- iREPA and HASTE: their checkpoints load; the backbone is REPA's ---------------------------------------------

@pytest.mark.parametrize("layer", ["conv", "mlp"])
def test_irepa_checkpoint_loads_and_gives_the_official_velocity(tmp_path, layer):
    sit = _official("irepa", "models.sit")
    net = _perturbed(sit.SiT(**BASE, encoder_depth=2, z_dims=[32], projector_dim=48, projection_layer_type=layer,
                             proj_kwargs_kernel_size=3))
    loaded = _save(tmp_path, net, encoder_depth=2)
    x, t, y = _inputs()
    with torch.no_grad():
        v_ref = net(x, t, y)[0]
        v = loaded.model(x, t, y)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-5)
    if layer == "conv":               # repa's conv projector is the official one, under another name
        from repa.models.sit import ConvProjector
        conv = ConvProjector(64, 32, 3)
        conv.conv.load_state_dict(net.projectors[0].projection_layer.state_dict(), strict=True)
        tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(conv(tokens), net.projectors[0](tokens), rtol=0, atol=1e-5)


def test_haste_checkpoint_loads_with_its_projector(tmp_path):
    sit = _official("haste", "models.sit")
    net = _perturbed(sit.SiT(**BASE, encoder_depth=2, z_dims=[32], projector_dim=48))
    loaded = _save(tmp_path, net, encoder_depth=2)
    x, t, y = _inputs()
    with torch.no_grad():
        v_ref, logits_ref, zs_ref = net(x, t, y, return_act=True)   # blocks 1..encoder_depth: attention logits
        out = loaded.model.forward_features(x, t, y, project=True, attention=(1, 2))
    torch.testing.assert_close(out.prediction, v_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.projected[0], zs_ref[0], rtol=0, atol=1e-5)
    for block, ref in zip((1, 2), logits_ref):      # what HASTE's attention term reads
        torch.testing.assert_close(out.attention[block], ref, rtol=0, atol=1e-5)


# ---- iREPA's and HASTE's loss pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [1.0, 0.6])
def test_irepa_spatial_normalisation_equals_the_official_zscore(gamma):
    utils = _official("irepa", "utils")
    from repa.losses import spatial_normalize
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 16, 8, generator=gen) + torch.randn(1, 1, 8, generator=gen) * 3   # per-channel offsets
    torch.testing.assert_close(spatial_normalize(tokens, gamma), utils.spatial_zscore(tokens, alpha=gamma),
                               rtol=0, atol=1e-6)


def test_haste_attention_and_feature_terms_equal_the_official_siloss():
    """The official SILoss (hard-wired to SiT-XL/2 with DINOv2-B: model blocks 5-8 against teacher blocks 9-12, 12
    heads, 256 tokens) on a stand-in network returning fixed attention logits and projections: its attention term
    softmaxes the teacher's patch logits, which ``Encoder.tokens_and_attention`` returns as probabilities."""
    loss = _official("haste", "loss")
    from repa.losses import alignment_loss, attention_alignment_loss
    gen = torch.Generator().manual_seed(3)
    batch, heads, tokens = 2, 12, 256
    student = [torch.randn(batch, heads + 4, tokens, tokens, generator=gen) for _ in range(8)]   # 16 model heads
    teacher = [torch.randn(batch, heads, tokens, tokens, generator=gen) for _ in range(12)]
    projected, targets = torch.randn(batch, tokens, 16, generator=gen), torch.randn(batch, tokens, 16, generator=gen)
    images = torch.randn(batch, 4, 32, 32, generator=gen)

    def network(x, t, return_act=True, **kwargs):
        return torch.zeros_like(x), student, [projected]
    _, attn, proj = loss.SILoss()(network, images, zs=[teacher], proj_s=[targets])
    want_attn = attention_alignment_loss(student[4:8], [teacher[i + 4].softmax(dim=-1) for i in range(4, 8)]).mean()
    torch.testing.assert_close(want_attn, attn, rtol=1e-6, atol=0)
    torch.testing.assert_close(alignment_loss([projected], [targets]).mean(), proj.reshape(()), rtol=1e-6, atol=0)


# ---- REG: the sampler with its own class-token scale ----------------------------------------------------------------

@pytest.mark.parametrize("cls_cfg_scale", [1.0, 0.0, 2.3, 4.0])
def test_reg_sde_equals_the_official_sampler(tmp_path, monkeypatch, cls_cfg_scale):
    sit = _official("reg", "models.sit")
    samplers = _official("reg", "samplers")
    net = _perturbed(sit.SiT(**BASE, encoder_depth=2, z_dims=[32], projector_dim=48, cls_token_dim=32))
    loaded = _save(tmp_path, net, encoder_depth=2)
    gen = torch.Generator().manual_seed(5)
    x1, c1 = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 32, generator=gen)
    y, steps = torch.tensor([3, 7]), 6
    torch.manual_seed(11)       # the official sampler draws eps (image) then eps (class token) per step, globally
    want = samplers.euler_maruyama_sampler(net, x1, y, num_steps=steps, cfg_scale=2.3, guidance_high=0.85,
                                           cls_latents=c1, args=argparse.Namespace(cls_cfg_scale=cls_cfg_scale))
    import repa.samplers as ours

    def official_order(shape, generator, device):   # the same draws in the official order: randn_like of the
        image = torch.randn(shape[0], 4, 8, 8, dtype=torch.float64)    # float64 states, image first
        return torch.cat([image.flatten(1), torch.randn(shape[0], 32, dtype=torch.float64)], dim=1)
    monkeypatch.setattr(ours, "per_sample_noise", official_order)
    torch.manual_seed(11)
    got, _ = sample_with_class_token(loaded, x1, y, sampler="sde", steps=steps, cfg_scale=2.3,
                                     guidance_interval=(0.0, 0.85), cls_cfg_scale=cls_cfg_scale,
                                     class_token_noise=c1.double())
    diff = float((got.double() - want.detach().double()).abs().max())
    print(f"cls_cfg_scale {cls_cfg_scale}: max abs difference {diff:.3g}")
    assert diff <= 1e-5, diff
