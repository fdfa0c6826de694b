"""MoCo v3: a fake release checkpoint (``module.base_encoder.*`` in the timm ViT layout, plus the momentum encoder,
predictor and projection head that the loader must drop) made from a tiny random transformers ViT, loaded back
through ``load_encoder``; the tokens must equal the original model's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repa.encoders import EncoderWeightsError, load_encoder
from repa.encoders.mocov3 import mocov3_to_timm, timm_vit_to_transformers

transformers = pytest.importorskip("transformers")


def _tiny_vit(depth: int = 2, seed: int = 0):
    """A MoCo-shaped ViT (head width 64, LN eps 1e-6, exact GELU), patch 16, 4x4 position table."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(hidden_size=128, num_hidden_layers=depth, num_attention_heads=2,
                                    intermediate_size=256, image_size=64, patch_size=16, layer_norm_eps=1e-6,
                                    hidden_act="gelu")
    model = transformers.ViTModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():                    # random LayerNorm affines and biases too, so nothing is trivially 0/1
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _to_timm_layout(model) -> dict[str, torch.Tensor]:
    """The transformers 5 ViT state dict in timm's names (fused qkv), written independently of the loader."""
    sd = model.state_dict()
    out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    for i in range(model.config.num_hidden_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{kind}"] = sd[p + f"layernorm_before.{kind}"]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[p + f"attention.{n}_proj.{kind}"] for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[p + f"attention.o_proj.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = sd[p + f"layernorm_after.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[p + f"mlp.fc1.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[p + f"mlp.fc2.{kind}"]
    return out


def antialiased_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference's load-time resampling of a (1, 1 + n*n, E) table (timm ``resample_abs_pos_embed``: CLS row
    kept, bicubic with antialias in float32), written out independently of repa."""
    n = round((table.shape[1] - 1) ** 0.5)
    if n == grid:
        return table
    fmap = table[:, 1:].float().reshape(1, n, n, -1).permute(0, 3, 1, 2)
    fmap = F.interpolate(fmap, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([table[:, :1], fmap.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)], dim=1)


def save_fake_mocov3_checkpoint(path: str, seed: int = 0):
    """Write a MoCo v3 release-style ``.pth.tar`` for a tiny random ViT; returns that ViT."""
    model = _tiny_vit(seed=seed)
    timm_sd = _to_timm_layout(model)
    state_dict = {f"module.base_encoder.{k}": v.clone() for k, v in timm_sd.items()}
    state_dict.update({f"module.momentum_encoder.{k}": v.clone() for k, v in timm_sd.items()})
    state_dict["module.base_encoder.head.0.weight"] = torch.randn(256, 128)       # projection MLP: dropped
    state_dict["module.predictor.0.weight"] = torch.randn(256, 256)
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state_dict}, path)
    return model


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="the independent inverse mapping is written for the transformers 5 ViT layout")
@pytest.mark.parametrize("res", [64, 128])          # 4x4 = training grid; 8x8 = table resampled at load
def test_mocov3_checkpoint_roundtrip(tmp_path, res):
    path = str(tmp_path / "vit-b-300ep.pth.tar")
    original = save_fake_mocov3_checkpoint(path)
    enc = load_encoder("mocov3-vit-b", resolution=res, token_grid=res // 16, weights=path)
    images = torch.randint(0, 256, (2, 3, res, res), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)                    # no resize for MoCo v3
    with torch.no_grad():            # the reference resamples the table once at load (antialiased), not at run time
        table = original.embeddings.position_embeddings
        original.embeddings.position_embeddings = torch.nn.Parameter(antialiased_table(table, res // 16))
        expect = original(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 1:]   # table as is
    torch.testing.assert_close(enc(images), expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc.backbone.model.embeddings.position_embeddings,
                               original.embeddings.position_embeddings, rtol=0, atol=0)
    assert enc.embed_dim == 128 and enc.backbone.model.config.num_attention_heads == 2


def test_mocov3_key_fixes_and_filtering():
    sd = {"module.base_encoder.blocks.13.norm13.weight": 1, "module.base_encoder.blocks.13.mlp.fc13.bias": 2,
          "module.base_encoder.blocks.14.norm14.bias": 3, "module.base_encoder.blocks.14.mlp.fc14.weight": 4,
          "module.base_encoder.blocks.0.attn.qkv.weight": 5, "module.base_encoder.head.2.weight": 6,
          "module.momentum_encoder.norm.weight": 7, "module.predictor.0.weight": 8, "module.base_encoder.fc.w": 9}
    assert mocov3_to_timm(sd) == {"blocks.13.norm1.weight": 1, "blocks.13.mlp.fc1.bias": 2,
                                  "blocks.14.norm2.bias": 3, "blocks.14.mlp.fc2.weight": 4,
                                  "blocks.0.attn.qkv.weight": 5}
    with pytest.raises(ValueError, match="module.base_encoder"):
        mocov3_to_timm({"state_dict": 1})


def test_timm_to_transformers_legacy_layout():
    qkv = torch.arange(12.0).view(6, 2)
    out = timm_vit_to_transformers({"blocks.3.attn.qkv.weight": qkv, "blocks.3.mlp.fc1.bias": torch.ones(2),
                                    "norm.weight": torch.ones(2)}, legacy_layout=True)
    assert set(out) == {"encoder.layer.3.attention.attention.query.weight", "encoder.layer.3.attention.attention.key"
                        ".weight", "encoder.layer.3.attention.attention.value.weight",
                        "encoder.layer.3.intermediate.dense.bias", "layernorm.weight"}
    torch.testing.assert_close(out["encoder.layer.3.attention.attention.value.weight"], qkv[4:])
    with pytest.raises(KeyError, match="unexpected key"):
        timm_vit_to_transformers({"blocks.0.ls1.gamma": torch.ones(2)})


def test_mocov3_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                  # the default file is looked for in the cwd
    with pytest.raises(EncoderWeightsError) as info:
        load_encoder("mocov3-vit-l", resolution=256, token_grid=16)
    message = str(info.value)
    assert "ckpts/mocov3_vitl.pth" in message and "vit-l-300ep.pth.tar" in message
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"foo": torch.ones(1)}}, str(bad))
    with pytest.raises(EncoderWeightsError, match="not a MoCo v3"):
        load_encoder("mocov3-vit-b", resolution=256, token_grid=16, weights=str(bad))
