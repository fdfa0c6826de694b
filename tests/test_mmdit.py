"""MMDiT (repa.models.mmdit) against written-out expectations: the reference's parameter layout, a forward pass
re-implemented here from the SD3 / REPA-reference equations with explicit softmax attention, the cropped sin-cos
table, and invariants of joint attention. tests/test_reference_t2i.py compares with the reference code itself."""
import math

import numpy as np
import pytest
import torch

from repa.conditions import TextContext, condition_of
from repa.config import ConfigError
from repa.models import MODELS, build_model, model_config


def tiny(**kw):
    fields = dict(depth=2, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1, encoder_dims=(16,),
                  projector_dim=24, context_dim=12)
    return model_config("MMDiT-24x768/2", **{**fields, **kw})


def perturbed(cfg, seed=0):
    torch.manual_seed(seed)
    net = build_model(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_registry_sizes_are_the_references():
    # sihyun-yu/REPA models/mmdit.py: hidden_size = 32 * depth, num_heads = depth, patch 2, no label table
    for name, size in MODELS.items():
        if name.startswith("MMDiT-"):
            d = size["depth"]
            assert (size["hidden_size"], size["num_heads"], size["patch_size"], size["num_classes"]) == (32 * d, d, 2, 0)
    cfg = model_config("MMDiT-24x768/2")
    assert (cfg.hidden_size, cfg.num_heads, cfg.context_dim, cfg.class_dropout) == (768, 24, 768, 0.1)
    # the reference's MMDiT(input_size=32, z_dims=[768], encoder_depth=8) has 512,415,504 parameters (counted once
    # with the reference code at commit 67f7145)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == 512_415_504


def test_parameter_names_are_the_reference_layout():
    names = dict((k, tuple(v.shape)) for k, v in build_model(tiny()).state_dict().items())
    D = 32
    expected = {"pos_embed": (1, 256, D), "x_embedder.proj.weight": (D, 4, 2, 2), "x_embedder.proj.bias": (D,),
                "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.2.weight": (D, D),
                "context_embedder.weight": (D, 12), "context_embedder.bias": (D,),
                "joint_blocks.0.context_block.attn.qkv.weight": (3 * D, D),
                "joint_blocks.0.context_block.attn.proj.weight": (D, D),
                "joint_blocks.0.context_block.mlp.fc1.weight": (4 * D, D),
                "joint_blocks.0.context_block.adaLN_modulation.1.weight": (6 * D, D),
                "joint_blocks.1.context_block.adaLN_modulation.1.weight": (2 * D, D),      # pre_only: shift, scale
                "joint_blocks.1.x_block.mlp.fc2.weight": (D, 4 * D),
                "final_layer.linear.weight": (2 * 2 * 4, D), "final_layer.adaLN_modulation.1.weight": (2 * D, D),
                "projectors.0.0.weight": (24, D), "projectors.0.4.weight": (16, 24)}
    for key, shape in expected.items():
        assert names[key] == shape, key
    assert not any(k.startswith("joint_blocks.1.context_block.") and (".mlp." in k or "attn.proj" in k)
                   for k in names)                        # the last text stream only gives keys and values
    # pos_embed 1, x/t/context embedders 2 + 4 + 2; a full stream 10 tensors (qkv, proj, fc1, fc2, adaLN), the
    # last text stream 4 (qkv, adaLN); final layer 4; projector 6
    assert len(names) == 1 + 8 + (10 + 10) + (4 + 10) + 4 + 6


def sincos(dim, positions):
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    out = np.outer(positions, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def test_position_table_is_the_centre_of_a_16x16_table():
    net = build_model(tiny())
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    table = np.concatenate([sincos(16, cols.ravel()), sincos(16, rows.ravel())], axis=1)    # column half first
    assert np.allclose(net.pos_embed[0].numpy(), table, atol=1e-6)
    crop = table.reshape(16, 16, 32)[6:10, 6:10].reshape(16, 32)     # grid 4: top = left = (16 - 4) // 2
    from repa.models.mmdit import cropped_table
    assert np.allclose(cropped_table(net.pos_embed, 16, 4)[0].numpy(), crop, atol=1e-6)


def naive_forward(net, x, t, ctx):
    """The network written out with explicit loops over blocks and softmax attention (SD3 Fig. 2b, the REPA
    reference's block_mixing), reading only the state dict."""
    sd = {k: v.double() for k, v in net.state_dict().items()}
    c = net.config
    lin = lambda name, v: v @ sd[name + ".weight"].T + sd[name + ".bias"]
    silu = lambda v: v * torch.sigmoid(v)
    ln = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)
    gelu = lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    B, p, g, D = x.shape[0], c.patch_size, c.grid_size, c.hidden_size
    patches = x.double().reshape(B, 4, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, 4 * p * p)
    img = patches @ sd["x_embedder.proj.weight"].reshape(D, -1).T + sd["x_embedder.proj.bias"]
    table = sd["pos_embed"].reshape(16, 16, D)[(16 - g) // 2:(16 - g) // 2 + g, (16 - g) // 2:(16 - g) // 2 + g]
    img = img + table.reshape(1, g * g, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    tf = torch.cat([torch.cos(t.double()[:, None] * freqs), torch.sin(t.double()[:, None] * freqs)], dim=1)
    cond = lin("t_embedder.mlp.2", silu(lin("t_embedder.mlp.0", tf)))
    txt = lin("context_embedder", ctx.double())
    H = c.num_heads
    for i in range(c.depth):
        streams = {}
        for name, tokens in (("context_block", txt), ("x_block", img)):
            pre = f"joint_blocks.{i}.{name}"
            mods = lin(pre + ".adaLN_modulation.1", silu(cond)).chunk(2 if f"{pre}.mlp.fc1.weight" not in sd else 6, -1)
            h = ln(tokens) * (1 + mods[1][:, None]) + mods[0][:, None]
            streams[name] = (tokens, lin(pre + ".attn.qkv", h), mods, pre)
        qkv = torch.cat([streams["context_block"][1], streams["x_block"][1]], dim=1)
        q, k, v = qkv.reshape(B, -1, 3, H, D // H).unbind(2)
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D // H), dim=-1)
        attended = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, -1, D)
        L = txt.shape[1]
        outs = {}
        for name, part in (("context_block", attended[:, :L]), ("x_block", attended[:, L:])):
            tokens, _, mods, pre = streams[name]
            if len(mods) == 2:
                continue
            tokens = tokens + mods[2][:, None] * lin(pre + ".attn.proj", part)
            h = ln(tokens) * (1 + mods[4][:, None]) + mods[3][:, None]
            outs[name] = tokens + mods[5][:, None] * lin(pre + ".mlp.fc2", gelu(lin(pre + ".mlp.fc1", h)))
        txt, img = outs.get("context_block"), outs["x_block"]
    shift, scale = lin("final_layer.adaLN_modulation.1", silu(cond)).chunk(2, -1)
    out = lin("final_layer.linear", ln(img) * (1 + scale[:, None]) + shift[:, None])      # (B, N, p*p*C)
    return out.reshape(B, g, g, p, p, 4).permute(0, 5, 1, 3, 2, 4).reshape(B, 4, g * p, g * p)


def test_forward_matches_the_written_out_network():
    net = perturbed(tiny(depth=3, encoder_depth=2))
    gen = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(3, 4, 8, 8, generator=gen), torch.rand(3, generator=gen), torch.randn(3, 5, 12, generator=gen)
    with torch.no_grad():
        got = net(x, t, ctx).double()
    assert got.shape == (3, 4, 8, 8)
    assert torch.allclose(got, naive_forward(net, x, t, ctx), atol=1e-5)


def test_joint_attention_invariants_and_features():
    net = perturbed(tiny())
    gen = torch.Generator().manual_seed(2)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, generator=gen), torch.randn(2, 6, 12, generator=gen)
    with torch.no_grad():
        out = net.forward_features(x, t, ctx, project=True, layers=(1, 2))
        # text tokens carry no position: their order does not matter to the image stream
        shuffled = net(x, t, ctx[:, torch.randperm(6, generator=gen)])
        other = net(x, t, torch.randn(2, 6, 12, generator=gen))
        alone = net(x[:1], t[:1], ctx[:1])
    assert torch.allclose(out.prediction, shuffled, atol=1e-5)
    assert not torch.allclose(out.prediction, other, atol=1e-3)          # the caption conditions the output
    assert torch.allclose(out.prediction[:1], alone, atol=1e-5)           # rows are independent
    assert [p.shape for p in out.projected] == [(2, 16, 16)] and sorted(out.hidden) == [1, 2]
    assert out.hidden[2].shape == (2, 16, 32)
    with pytest.raises(ValueError, match="text-conditioned"):
        net(x, t, None)
    with pytest.raises(ValueError, match="no attention maps"):
        net.forward_features(x, t, ctx, attention=(1,))


def test_config_checks_and_condition():
    assert isinstance(condition_of(tiny()), TextContext) and condition_of(tiny()).guidable
    assert not condition_of(tiny(class_dropout=0.0)).guidable
    with pytest.raises(ConfigError, match="text-conditioned"):
        tiny(num_classes=10)
    with pytest.raises(ConfigError, match="model.context_dim"):
        tiny(context_dim=0)


def test_a_reference_training_checkpoint_loads_through_load_model(tmp_path):
    """train_t2i.py saves {model, ema, opt, args, steps} with an argparse Namespace; the layout is the reference's
    (tests/test_reference_t2i.py checks it against the reference network itself)."""
    import argparse
    import dataclasses
    import repa
    net = perturbed(tiny(depth=2, hidden_size=64, num_heads=2, encoder_depth=1))
    state = net.state_dict()
    path = tmp_path / "0000005.pt"
    torch.save({"model": state, "ema": state, "opt": {}, "steps": 5,
                "args": argparse.Namespace(resolution=64, encoder_depth=1, cfg_prob=0.1, enc_type="dinov2-vit-b")},
               path)
    loaded = repa.load_model(path)
    assert loaded.step == 5 and loaded.train_config is None
    want = dataclasses.replace(net.config, name="MMDiT-2x64/2", num_heads=2)
    assert loaded.config == want
    gen = torch.Generator().manual_seed(3)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, generator=gen), torch.randn(2, 4, 12, generator=gen)
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, ctx), net(x, t, ctx))
