"""REPA-E's autoencoders (``f8d4``, ``f16d32``) loaded as diffusers ``AutoencoderKL``: strict renaming against a
written-out parameter table of latent-diffusion's layout, the latent statistics folded in, and (opt-in) the same
encodings and decodings as End2End-Diffusion/REPA-E's own ``models/autoencoder.py``.

Opt-in: ``REPAE_OFFICIAL_REPO`` pointing at a snapshot of End2End-Diffusion/REPA-E (commit 3ad8046 was read).
"""
import importlib
import os
import sys
import types

import pytest
import torch

from repa.autoencoder import LATENT_SCALE, encode_moments, load_vae
from repa.autoencoder_repae import ARCHS, from_repae_state, infer_arch
from repa.fields import ConfigError


def ldm_shapes(arch: str) -> dict[str, tuple]:
    """Every parameter of latent-diffusion's AutoencoderKL (ch 128, 2 res blocks, attention at 16 px of 256) with
    its shape, written out from the architecture (independent of the renaming under test)."""
    c_lat, mult = ARCHS[arch]
    out: dict[str, tuple] = {}

    def norm(p, c):
        out[f"{p}.weight"], out[f"{p}.bias"] = (c,), (c,)

    def conv(p, cout, cin, k):
        out[f"{p}.weight"], out[f"{p}.bias"] = (cout, cin, k, k), (cout,)

    def resnet(p, cin, cout):
        norm(f"{p}.norm1", cin), conv(f"{p}.conv1", cout, cin, 3), norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.nin_shortcut", cout, cin, 1)

    def attn(p, c):
        norm(f"{p}.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{name}", c, c, 1)

    def mid(p, c):
        resnet(f"{p}.mid.block_1", c, c), attn(f"{p}.mid.attn_1", c), resnet(f"{p}.mid.block_2", c, c)

    conv("encoder.conv_in", 128, 3, 3)
    cin, res = 128, 256
    for i, m in enumerate(mult):
        for j in range(2):
            resnet(f"encoder.down.{i}.block.{j}", cin, 128 * m)
            cin = 128 * m
            if res == 16:
                attn(f"encoder.down.{i}.attn.{j}", cin)
        if i != len(mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
            res //= 2
    mid("encoder", cin), norm("encoder.norm_out", cin), conv("encoder.conv_out", 2 * c_lat, cin, 3)
    cin = 128 * mult[-1]
    conv("decoder.conv_in", cin, c_lat, 3)
    mid("decoder", cin)
    for i in reversed(range(len(mult))):
        for j in range(3):
            resnet(f"decoder.up.{i}.block.{j}", cin, 128 * mult[i])
            cin = 128 * mult[i]
            if res == 16:
                attn(f"decoder.up.{i}.attn.{j}", cin)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
            res *= 2
    norm("decoder.norm_out", cin), conv("decoder.conv_out", 3, cin, 3)
    conv("quant_conv", 2 * c_lat, 2 * c_lat, 1), conv("post_quant_conv", c_lat, c_lat, 1)
    return out


def _random_state(arch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(s, generator=gen) for k, s in ldm_shapes(arch).items()}


@pytest.mark.parametrize("arch", ["f8d4", "f16d32"])
def test_state_dict_loads_strictly_with_the_written_out_correspondence(arch):
    state = _random_state(arch)
    assert infer_arch(state) == arch
    vae = from_repae_state(state)                    # raises on an unused key; load_state_dict is strict
    target = vae.state_dict()
    assert len(target) == len(state)
    levels, widen = len(ARCHS[arch][1]), 1 if arch == "f8d4" else 2      # the first level that widens
    pairs = {"decoder.up.0.block.2.conv2.weight": f"decoder.up_blocks.{levels - 1}.resnets.2.conv2.weight",
             f"encoder.down.{widen}.block.0.nin_shortcut.bias": f"encoder.down_blocks.{widen}.resnets.0.conv_shortcut.bias",
             "encoder.mid.attn_1.proj_out.weight": "encoder.mid_block.attentions.0.to_out.0.weight",
             "decoder.mid.block_2.norm1.weight": "decoder.mid_block.resnets.1.norm1.weight",
             "encoder.norm_out.bias": "encoder.conv_norm_out.bias",
             "decoder.up.1.upsample.conv.weight": f"decoder.up_blocks.{levels - 2}.upsamplers.0.conv.weight"}
    if arch == "f16d32":                             # attention in the 16-px stages of both halves
        pairs["encoder.down.4.attn.1.q.weight"] = "encoder.down_blocks.4.attentions.1.to_q.weight"
        pairs["decoder.up.4.attn.2.v.bias"] = "decoder.up_blocks.0.attentions.2.to_v.bias"
    for ldm, diffusers in pairs.items():
        assert torch.equal(target[diffusers].flatten(), state[ldm].flatten()), ldm
    with pytest.raises(ConfigError, match="unexpected parameter"):
        from_repae_state({**state, "encoder.extra.weight": torch.zeros(1)})


def test_release_file_with_latent_statistics_folds_them(tmp_path):
    state = _random_state("f8d4")
    torch.save(state, tmp_path / "sdvae-f8d4.pt")
    gen = torch.Generator().manual_seed(1)
    scale, bias = 0.5 + torch.rand(1, 4, 1, 1, generator=gen), torch.randn(1, 4, 1, 1, generator=gen)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen)
    raw = load_vae(str(tmp_path / "sdvae-f8d4.pt"))             # no statistics file yet: the plain latents
    mean, _ = encode_moments(raw, images)
    torch.save({"latents_scale": scale, "latents_bias": bias}, tmp_path / "sdvae-f8d4-latents-stats.pt")
    folded = load_vae(str(tmp_path))                              # the folder of a release, statistics beside it
    mean_f, _ = encode_moments(folded, images)
    assert torch.allclose(mean_f * LATENT_SCALE, (mean - bias) * scale, atol=1e-4)
    z = torch.randn(1, 4, 4, 4, generator=gen)
    assert torch.allclose(folded.decode(z).sample, raw.decode(z / scale * LATENT_SCALE + bias).sample, atol=1e-4)


def _official_autoencoder():
    root = os.environ.get("REPAE_OFFICIAL_REPO")
    if not root:
        pytest.skip("set REPAE_OFFICIAL_REPO to a snapshot of End2End-Diffusion/REPA-E")
    if "dictdot" not in sys.modules and importlib.util.find_spec("dictdot") is None:   # a dict with attribute access
        stub = types.ModuleType("dictdot")
        stub.dictdot = type("dictdot", (dict,), {"__getattr__": dict.__getitem__})
        sys.modules["dictdot"] = stub
    for cached in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[cached]
    sys.path.insert(0, os.path.abspath(root))
    try:
        return importlib.import_module("models.autoencoder")
    finally:
        sys.path.remove(os.path.abspath(root))


@pytest.mark.parametrize("arch", ["f8d4", "f16d32"])
def test_same_outputs_as_the_official_autoencoder(tmp_path, arch):
    official = _official_autoencoder()
    torch.manual_seed(0)
    theirs = official.vae_models[arch]().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(theirs.state_dict(), tmp_path / f"{arch}.pt")
    ours = load_vae(str(tmp_path / f"{arch}.pt"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        post = theirs.encode(x)
        mine = ours.encode(x).latent_dist
        diffs = [(post.mean - mine.mean).abs().max(), (post.logvar - mine.logvar).abs().max()]
        z = post.mean
        diffs.append((theirs.decode(z).sample - ours.decode(z).sample).abs().max())
    print(f"{arch}: max abs diff mean {diffs[0]:.2e} logvar {diffs[1]:.2e} decode {diffs[2]:.2e}")
    assert max(float(d) for d in diffs) < 1e-4
