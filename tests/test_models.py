"""SiT models: registry, shapes, zero init, the released parameter layout, projector placement."""
import pytest
import torch

from repa.config import ConfigError
from repa.models import MODELS, build_model, model_config

SIT_NAMES = [name for name in MODELS if name.startswith("SiT-")]

# The released REPA SiT-B/2 layout on 32x32x4 latents, one 768-d encoder.
SIT_B2_LAYOUT = {
    "pos_embed": (1, 256, 768),
    "x_embedder.proj.weight": (768, 4, 2, 2), "x_embedder.proj.bias": (768,),
    "t_embedder.mlp.0.weight": (768, 256), "t_embedder.mlp.0.bias": (768,),
    "t_embedder.mlp.2.weight": (768, 768), "t_embedder.mlp.2.bias": (768,),
    "y_embedder.embedding_table.weight": (1001, 768),
    "projectors.0.0.weight": (2048, 768), "projectors.0.0.bias": (2048,),
    "projectors.0.2.weight": (2048, 2048), "projectors.0.2.bias": (2048,),
    "projectors.0.4.weight": (768, 2048), "projectors.0.4.bias": (768,),
    "final_layer.linear.weight": (16, 768), "final_layer.linear.bias": (16,),
    "final_layer.adaLN_modulation.1.weight": (1536, 768), "final_layer.adaLN_modulation.1.bias": (1536,),
}
for i in range(12):
    SIT_B2_LAYOUT.update({
        f"blocks.{i}.attn.qkv.weight": (2304, 768), f"blocks.{i}.attn.qkv.bias": (2304,),
        f"blocks.{i}.attn.proj.weight": (768, 768), f"blocks.{i}.attn.proj.bias": (768,),
        f"blocks.{i}.mlp.fc1.weight": (3072, 768), f"blocks.{i}.mlp.fc1.bias": (3072,),
        f"blocks.{i}.mlp.fc2.weight": (768, 3072), f"blocks.{i}.mlp.fc2.bias": (768,),
        f"blocks.{i}.adaLN_modulation.1.weight": (4608, 768), f"blocks.{i}.adaLN_modulation.1.bias": (4608,),
    })


def test_sit_b2_state_dict_matches_released_layout():
    model = build_model(model_config("SiT-B/2", input_size=32, in_channels=4, encoder_depth=4))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == SIT_B2_LAYOUT


def test_registry_has_every_size_and_patch():
    for size in ("S", "B", "L", "XL"):
        for patch in (1, 2, 4, 8):
            assert f"SiT-{size}/{patch}" in MODELS
    assert MODELS["SiT-XL/2"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2,
                                  "learn_sigma": False, "prediction": "velocity"}


@pytest.mark.parametrize("name", SIT_NAMES)
def test_every_model_builds_tiny_with_right_shapes(name):
    patch = MODELS[name]["patch_size"]
    cfg = model_config(name, depth=2, hidden_size=32, num_heads=2, input_size=2 * patch * 2, in_channels=3,
                       num_classes=5, encoder_depth=1, encoder_dims=(7, 9), projector_dim=16)
    model = build_model(cfg)
    x = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    out = model.forward_features(x, torch.rand(2), torch.tensor([0, 5]), project=True, layers=(1, 2))
    assert out.prediction.shape == x.shape
    assert [p.shape for p in out.projected] == [(2, cfg.num_tokens, 7), (2, cfg.num_tokens, 9)]
    assert set(out.hidden) == {1, 2} and out.hidden[2].shape == (2, cfg.num_tokens, 32)


def test_fresh_model_outputs_exactly_zero():
    model = build_model(model_config("SiT-S/4", depth=2, hidden_size=64, num_heads=4, input_size=16, encoder_depth=1))
    out = model(torch.randn(3, 4, 16, 16), torch.rand(3), torch.tensor([1, 2, 1000]))
    assert out.shape == (3, 4, 16, 16) and torch.count_nonzero(out) == 0


def test_plain_call_returns_tensor_and_skips_projector():
    model = build_model(model_config("SiT-S/2", depth=2, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1))
    calls = []
    model.projectors[0].register_forward_hook(lambda *a: calls.append(1))
    x, t, y = torch.randn(1, 4, 8, 8), torch.rand(1), torch.tensor([0])
    out = model(x, t, y)
    assert isinstance(out, torch.Tensor) and not calls
    features = model.forward_features(x, t, y)
    assert not calls and features.projected == [] and features.hidden == {}
    features = model.forward_features(x, t, y, project=True)
    assert calls == [1] and torch.equal(features.prediction, out)


def test_pos_embed_is_2d_sincos_and_not_trained():
    model = build_model(model_config("SiT-S/2", depth=1, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1))
    pe = model.pos_embed[0]                                  # (16, 32) for a 4x4 grid
    assert "pos_embed" in model.state_dict() and "pos_embed" not in dict(model.named_parameters())
    # first half encodes the column, second half the row: tokens in the same column share the first half
    assert torch.allclose(pe[0, :16], pe[4, :16]) and not torch.allclose(pe[0, 16:], pe[4, 16:])
    assert torch.allclose(pe[0, 16:], pe[1, 16:])
    assert torch.allclose(pe[1, :8], torch.sin(torch.tensor(1.0) / 10000 ** (torch.arange(8) / 8.0)), atol=1e-6)


def test_time_embedding_uses_raw_t_with_cos_then_sin():
    from repa.models.sit import timestep_features
    t = torch.tensor([0.0, 0.5])
    feats = timestep_features(t, 256)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128) / 128)
    assert torch.allclose(feats[1, :128], torch.cos(0.5 * freqs)) and torch.allclose(feats[1, 128:], torch.sin(0.5 * freqs))
    assert torch.all(feats[0, :128] == 1) and torch.all(feats[0, 128:] == 0)


@pytest.mark.parametrize("overrides, field", [
    (dict(encoder_depth=0), "model.encoder_depth"),
    (dict(encoder_depth=13), "model.encoder_depth"),
    (dict(input_size=31), "model.input_size"),
    (dict(hidden_size=100, num_heads=12), "model.hidden_size"),
])
def test_bad_model_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        model_config("SiT-B/2", **overrides)


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="SiT-XL/2"):
        model_config("SiT-XXL/2")
    with pytest.raises(ConfigError, match="SiT-B/2"):
        model_config("SiT-B/3")


def test_wrong_input_size_is_rejected():
    model = build_model(model_config("SiT-S/2", depth=1, hidden_size=32, num_heads=2, input_size=8, encoder_depth=1))
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(1, 4, 16, 16), torch.rand(1), torch.tensor([0]))


def test_qk_norm_adds_per_head_layernorm():
    model = build_model(model_config("SiT-S/2", depth=1, hidden_size=32, num_heads=2, input_size=8, qk_norm=True, encoder_depth=1))
    assert model.state_dict()["blocks.0.attn.q_norm.weight"].shape == (16,)
