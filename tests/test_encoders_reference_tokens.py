"""Teacher tokens against the reference pipelines, each side built from one random state dict (no network).

DINOv2, as REPA builds it (utils.py ``load_encoders`` + train.py ``preprocess_raw_image``): the torch.hub model of
facebookresearch/dinov2, whose 37x37 ``pos_embed`` is resampled once with timm's ``resample_abs_pos_embed`` (CLS
row kept, bicubic, antialias on) to 16x16 at 256 px / 32x32 at 512 px; the image /255, ImageNet-normalised, resized
bicubic to 224 / 448 px; tokens ``forward_features(x)["x_norm_patchtokens"]``. Here the reference side is a ViT
forward written out below from a state dict in the facebookresearch/dinov2 layout; the same state dict, renamed,
is saved as a transformers folder and loaded with ``load_encoder``. ``test_encoders_dinov2_reference.py`` runs
the authors' code itself when a checkout is available.

MAE and DINOv1 (patch 16, fed at the dataset resolution): REPA resamples the table once at load to the grid used;
MAE's ``forward_features`` (models/mae_vit.py) returns the last block's tokens *without* the final LayerNorm, CLS
dropped; DINOv1 keeps the final norm.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from repa.encoders import load_encoder
from repa.encoders.hf import resample_position_table

transformers = pytest.importorskip("transformers")
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MIN_COSINE = 0.99999


def _mocov3_helpers():
    from tests.conftest import load_test_module
    return load_test_module("test_encoders_mocov3.py")


antialiased_table = _mocov3_helpers().antialiased_table      # the reference's load-time resampling, written out


def runtime_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """What a run-time interpolation without antialias gives (transformers' Dinov2Model / ViTModel)."""
    n = math.isqrt(table.shape[1] - 1)
    fmap = table[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    fmap = F.interpolate(fmap, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], fmap.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


# ---- DINOv2 in the facebookresearch/dinov2 layout (what torch.hub loads) -------------------------------------

def dinov2_state_dict(dim: int, depth: int, registers: int, seed: int = 0, table_side: int = 37,
                      patch: int = 14, mlp_ratio: int = 4) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of ``dinov2_vit*14[_reg]`` (block_chunks=0, layer scale, MLP FFN), with
    a 37x37 position table like a trained one: a coarse random field upsampled, plus noise (std 0.1 on 0.5)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, generator=g)

    coarse = rand(1, dim, 6, 6)
    smooth = F.interpolate(coarse, size=(table_side, table_side), mode="bicubic", align_corners=False)
    grid_rows = 0.5 * smooth.flatten(2).transpose(1, 2) + rand(1, table_side ** 2, dim, std=0.1)
    sd = {"cls_token": rand(1, 1, dim), "pos_embed": torch.cat([rand(1, 1, dim, std=0.5), grid_rows], dim=1),
          "mask_token": rand(1, dim, std=0.02),
          "patch_embed.proj.weight": rand(dim, 3, patch, patch, std=0.05), "patch_embed.proj.bias": rand(dim, std=0.1),
          "norm.weight": rand(dim, mean=1.0, std=0.1), "norm.bias": rand(dim, std=0.1)}
    if registers:
        sd["register_tokens"] = rand(1, registers, dim)
    hidden = dim * mlp_ratio
    for i in range(depth):
        k = f"blocks.{i}."
        sd.update({k + "norm1.weight": rand(dim, mean=1.0, std=0.1), k + "norm1.bias": rand(dim, std=0.1),
                   k + "attn.qkv.weight": rand(3 * dim, dim, std=dim ** -0.5), k + "attn.qkv.bias": rand(3 * dim, std=0.1),
                   k + "attn.proj.weight": rand(dim, dim, std=dim ** -0.5), k + "attn.proj.bias": rand(dim, std=0.1),
                   k + "ls1.gamma": rand(dim, mean=0.5, std=0.1),
                   k + "norm2.weight": rand(dim, mean=1.0, std=0.1), k + "norm2.bias": rand(dim, std=0.1),
                   k + "mlp.fc1.weight": rand(hidden, dim, std=dim ** -0.5), k + "mlp.fc1.bias": rand(hidden, std=0.1),
                   k + "mlp.fc2.weight": rand(dim, hidden, std=hidden ** -0.5), k + "mlp.fc2.bias": rand(dim, std=0.1),
                   k + "ls2.gamma": rand(dim, mean=0.5, std=0.1)})
    return sd


def save_dinov2_folder(sd: dict[str, torch.Tensor], folder, heads: int) -> None:
    """Rename a dinov2-layout state dict to transformers' Dinov2Model (or Dinov2WithRegistersModel), load it
    strictly and ``save_pretrained`` it (the hub folder layout of facebook/dinov2-*)."""
    dim, side = sd["cls_token"].shape[-1], math.isqrt(sd["pos_embed"].shape[1] - 1)
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    common = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                  mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] // dim, patch_size=patch, image_size=side * patch,
                  layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu", qkv_bias=True)
    if "register_tokens" in sd:
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            num_register_tokens=sd["register_tokens"].shape[1], **common))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    new_layout = "encoder.layer.0.attention.q_proj.weight" in model.state_dict()
    qkv_names = ("q_proj", "k_proj", "v_proj") if new_layout else ("attention.query", "attention.key", "attention.value")
    out_name = "o_proj" if new_layout else "output.dense"
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "mask_token": "embeddings.mask_token", "register_tokens": "embeddings.register_tokens",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    block = {"norm1": "norm1", "attn.proj": f"attention.{out_name}", "ls1.gamma": "layer_scale1.lambda1",
             "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "ls2.gamma": "layer_scale2.lambda1"}
    converted = {}
    for key, value in sd.items():
        if key in top:
            converted[top[key]] = value
            continue
        _, i, rest = key.split(".", 2)
        name, kind = rest.rsplit(".", 1) if not rest.startswith("ls") else (rest, "")
        prefix = f"encoder.layer.{i}."
        if name == "attn.qkv":
            for part, target in zip(value.chunk(3, dim=0), qkv_names):
                converted[f"{prefix}attention.{target}.{kind}"] = part.clone()
        else:
            converted[prefix + block[name] + (f".{kind}" if kind else "")] = value
    model.load_state_dict(converted, strict=True)
    model.save_pretrained(str(folder))


def vit_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, *, final_norm: bool = True,
               eps: float = 1e-6) -> torch.Tensor:
    """A pre-norm ViT forward read off a timm / dinov2-layout state dict, in float64: (B, 3, S, S) -> all tokens
    (B, 1 + R + N, E) (CLS, R registers inserted after the position embedding as DINOv2 does, N patches).
    ``sd["pos_embed"]`` must already have the input's grid (no interpolation here)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    b, dim = x.shape[0], sd["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    patch = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t.flatten(2).transpose(1, 2)], dim=1) + sd["pos_embed"]
    if "register_tokens" in sd:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], dim=1)
    n = t.shape[1]
    for i in range(depth):
        k = f"blocks.{i}."
        h = F.layer_norm(t, (dim,), sd[k + "norm1.weight"], sd[k + "norm1.bias"], eps)
        q, key, v = F.linear(h, sd[k + "attn.qkv.weight"], sd[k + "attn.qkv.bias"]) \
            .reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)           # 3 x (B, heads, n, d)
        attn = torch.softmax(q @ key.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(b, n, dim), sd[k + "attn.proj.weight"], sd[k + "attn.proj.bias"])
        t = t + sd.get(k + "ls1.gamma", 1.0) * attn
        h = F.layer_norm(t, (dim,), sd[k + "norm2.weight"], sd[k + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, sd[k + "mlp.fc1.weight"], sd[k + "mlp.fc1.bias"])),
                     sd[k + "mlp.fc2.weight"], sd[k + "mlp.fc2.bias"])
        t = t + sd.get(k + "ls2.gamma", 1.0) * h
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps) if final_norm else t


def repa_dinov2_input(images: torch.Tensor) -> torch.Tensor:
    """REPA's ``preprocess_raw_image`` for dinov2: /255, ImageNet mean/std, bicubic to 224 * (resolution // 256)."""
    x = (images.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return F.interpolate(x, 224 * (images.shape[-1] // 256), mode="bicubic")


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def _images(b: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---- DINOv2 -----------------------------------------------------------------------------------------------------

HEADS = 4


@pytest.fixture(scope="module")
def dinov2_folders(tmp_path_factory):
    """registers -> (state dict in the dinov2 layout, transformers folder of the same weights)."""
    out = {}
    for registers in (0, 4):
        sd = dinov2_state_dict(dim=64, depth=2, registers=registers, seed=registers)
        folder = tmp_path_factory.mktemp(f"dinov2_reg{registers}")
        save_dinov2_folder(sd, folder, heads=HEADS)
        out[registers] = (sd, str(folder))
    return out


@pytest.mark.parametrize("resolution", [256, 512])
@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_tokens_equal_the_reference_pipeline(dinov2_folders, registers, resolution):
    sd, folder = dinov2_folders[registers]
    grid = resolution // 16                                                   # 16x16 at 256 px, 32x32 at 512 px
    name = "dinov2-vit-b-reg" if registers else "dinov2-vit-b"
    enc = load_encoder(name, resolution=resolution, token_grid=grid, weights=folder)
    images = _images(2, resolution)
    got = enc(images)                                                         # (B, grid**2, E)

    x = repa_dinov2_input(images)
    assert x.shape[-1] == 14 * grid
    reference = vit_tokens({**sd, "pos_embed": antialiased_table(sd["pos_embed"], grid)}, x, HEADS)
    expect = reference[:, 1 + registers:]                                     # x_norm_patchtokens
    assert got.shape == expect.shape == (2, grid * grid, 64)
    assert min_cosine(got, expect) > MIN_COSINE
    torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=1e-4)
    # the same check is blind to nothing: a run-time table without antialias gives clearly different tokens
    runtime = vit_tokens({**sd, "pos_embed": runtime_table(sd["pos_embed"], grid)}, x, HEADS)[:, 1 + registers:]
    assert min_cosine(runtime, expect) < 0.9999


# ---- the load-time resampling itself --------------------------------------------------------------------------

@pytest.mark.parametrize("old,new", [(37, 16), (37, 32), (14, 16), (14, 8), (4, 8), (6, 6)])
def test_resample_position_table_is_the_antialiased_bicubic(old, new):
    table = torch.randn(1, 1 + old * old, 12, generator=torch.Generator().manual_seed(old))
    out = resample_position_table(table, new)
    assert out.shape == (1, 1 + new * new, 12)
    assert torch.equal(out[:, :1], table[:, :1])                             # the CLS row is kept
    torch.testing.assert_close(out, antialiased_table(table, new), rtol=0, atol=0)
    half = resample_position_table(table.bfloat16(), new)                     # computed in float32, cast back
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, antialiased_table(table.bfloat16().float(), new).bfloat16(), rtol=0, atol=0)
    if old == new:
        assert out is table
    with pytest.raises(ValueError, match="square"):
        resample_position_table(table[:, :-1], new)


@pytest.mark.parametrize("old,new,prefix", [(37, 16, 1), (37, 32, 1), (14, 16, 1), (14, 8, 1), (4, 8, 1),
                                            (37, 16, 0), (7, 5, 2)])
def test_resample_position_table_equals_timm(old, new, prefix):
    timm_layers = pytest.importorskip("timm.layers")
    table = torch.randn(1, prefix + old * old, 24, generator=torch.Generator().manual_seed(old))
    for dtype in (torch.float32, torch.bfloat16):
        t = table.to(dtype)
        expect = timm_layers.resample_abs_pos_embed(t, [new, new], num_prefix_tokens=prefix)
        got = resample_position_table(t, new, prefix)
        assert got.dtype == expect.dtype
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_loaded_dinov2_table_equals_timm(dinov2_folders):
    timm_layers = pytest.importorskip("timm.layers")
    sd, folder = dinov2_folders[0]
    for resolution in (256, 512):
        enc = load_encoder("dinov2-vit-b", resolution=resolution, token_grid=resolution // 16, weights=folder)
        expect = timm_layers.resample_abs_pos_embed(sd["pos_embed"], [resolution // 16] * 2)
        torch.testing.assert_close(enc.backbone.model.embeddings.position_embeddings.detach(), expect,
                                   rtol=0, atol=0)


def test_a_table_resampled_at_load_refuses_another_grid(dinov2_folders):
    enc = load_encoder("dinov2-vit-b", resolution=256, token_grid=16, weights=dinov2_folders[0][1])
    assert enc.backbone.model.embeddings.position_embeddings.shape[1] == 1 + 16 * 16
    with pytest.raises(RuntimeError, match="16x16"):
        enc.backbone(torch.zeros(1, 3, 14 * 8, 14 * 8))


# ---- MAE and DINOv1: patch-16 ViTs fed at the dataset resolution ------------------------------------------------

def _save_vit(family: str, folder) -> None:
    """A tiny random hub-layout checkpoint (4x4 table, patch 16) with every parameter perturbed."""
    vit = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=128, patch_size=16,
               image_size=64, layer_norm_eps=1e-6, hidden_act="gelu")
    if family == "mae":                                                       # the hub holds encoder + decoder
        model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
            decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32, **vit))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(**vit), add_pooling_layer=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))


@pytest.mark.skipif(not TRANSFORMERS_5, reason="the timm-layout renaming helper is written for transformers 5")
@pytest.mark.parametrize("resolution", [64, 128, 256])                    # 4x4 (no resampling), 8x8, 16x16
@pytest.mark.parametrize("name,final_norm", [("mae-vit-l", False), ("dinov1-vit-b", True)])
def test_patch16_tokens_equal_the_reference_forward(name, final_norm, resolution, tmp_path):
    _save_vit("mae" if name.startswith("mae") else "vit", tmp_path)
    cls = transformers.ViTMAEModel if name.startswith("mae") else transformers.ViTModel
    original = cls.from_pretrained(str(tmp_path)).eval()
    timm_sd = _mocov3_helpers()._to_timm_layout(original)                  # the release layout (timm names)
    grid = resolution // 16
    enc = load_encoder(name, resolution=resolution, token_grid=grid, weights=str(tmp_path))
    images = _images(2, resolution)
    got = enc(images)

    x = (images.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD              # no resize for these encoders
    sd = {**timm_sd, "pos_embed": antialiased_table(timm_sd["pos_embed"], grid)}
    expect = vit_tokens(sd, x, HEADS, final_norm=final_norm)[:, 1:]          # CLS dropped
    assert got.shape == expect.shape == (2, grid * grid, 64)
    assert min_cosine(got, expect) > MIN_COSINE
    torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=1e-4)
    other = vit_tokens(sd, x, HEADS, final_norm=not final_norm)[:, 1:]      # the final norm is (not) applied
    assert min_cosine(got, other) < 0.999
