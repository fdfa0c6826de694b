"""REG, representation entanglement (Wu et al. 2025, arXiv 2507.01467; code Martinser/REG), as ``model.class_token``.

The network, the loss and both samplers are checked against the reference's definitions written out here by hand
(``models/sit.py``, ``loss.py``, ``samplers.py`` of Martinser/REG); the teacher's class token against transformers'
own output; the option against config validation; and the whole with a short CPU run and a checkpoint round trip.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import repa
from repa.config import ConfigError, ObjectiveConfig, apply_overrides
from repa.config_validate import validate_train
from repa.models import build_model
from repa.objectives import repa_loss
from repa.samplers import sample, sample_with_class_token
from repa.training import train
from tests.conftest import tiny_model_config, tiny_train_config


def _reg_model(seed=0, **overrides):
    """A tiny REG SiT with its zero-initialised layers perturbed, so every path carries signal."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(class_token=True, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name or "wg_norm" in name:
                p.normal_(std=0.2)
    return model


def _reference_forward(model, x, t, y, cls):
    """Martinser/REG ``SiT.forward``, written out: the class token through Linear then LayerNorm, put first, plus a
    position table whose first row is zero; the blocks; the final layer's adaLN; ``linear_cls`` on token 0 and
    ``linear`` on the others."""
    c = model.t_embedder(t) + model.y_embedder(y)
    cls_in = F.layer_norm(cls @ model.cls_projectors2.weight.T + model.cls_projectors2.bias, (32,),
                          model.wg_norm.weight, model.wg_norm.bias, eps=1e-6)
    patches = model.x_embedder.proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([cls_in[:, None], patches], dim=1)
    pos = model.pos_embed
    assert torch.all(pos[0, 0] == 0)
    h = h + pos
    for block in model.blocks:
        h = block(h, c)
    shift, scale = model.final_layer.adaLN_modulation(c).chunk(2, dim=-1)
    h = F.layer_norm(h, (32,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    cls_out = h[:, 0] @ model.final_layer.linear_cls.weight.T + model.final_layer.linear_cls.bias
    return model.unpatchify(model.final_layer.linear(h[:, 1:])), cls_out


def test_reg_network_is_the_reference_forward():
    model = _reg_model()
    x, t, y, cls = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 2, 3]), torch.randn(3, 16)
    out = model.forward_features(x, t, y, class_token=cls, project=True, layers=(1,))
    want_x, want_cls = _reference_forward(model, x, t, y, cls)
    torch.testing.assert_close(out.prediction, want_x)
    torch.testing.assert_close(out.class_token, want_cls)
    assert out.projected[0].shape == (3, 17, 16) and out.hidden[1].shape == (3, 16, 32)   # 1 + N, then N
    # the class token is entangled: changing it changes the image velocity
    other = model.forward_features(x, t, y, class_token=cls + 1).prediction
    assert not torch.allclose(other, out.prediction)
    with pytest.raises(ValueError, match="class_token"):
        model(x, t, y)                                         # a REG network needs its class token


def test_reg_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(class_token=True))
    assert torch.all(model.final_layer.linear_cls.weight == 0) and torch.all(model.final_layer.linear_cls.bias == 0)
    assert torch.all(model.cls_projectors2.bias == 0) and model.cls_projectors2.weight.abs().sum() > 0
    assert torch.all(model.wg_norm.weight == 1) and torch.all(model.wg_norm.bias == 0)
    assert model.pos_embed.shape == (1, 17, 32) and torch.all(model.pos_embed[0, 0] == 0)
    plain = build_model(tiny_model_config())
    torch.testing.assert_close(model.pos_embed[:, 1:], plain.pos_embed)


def test_reg_loss_is_the_reference_loss():
    """Martinser/REG ``loss.py`` and ``train.py``, linear path: x_t = (1 - t) x + t n, target n - x; the class token
    the same with its own noise; loss = mse + 0.5 * proj + 0.03 * mse_cls, the projection loss over the class token
    and the patches (``dense_z = cat(cls, patches)``)."""
    model = _reg_model()
    gen = torch.Generator().manual_seed(1)
    B, E = 4, 16
    x0, noise = torch.randn(B, 1, 8, 8, generator=gen), torch.randn(B, 1, 8, 8, generator=gen)
    cls, cls_noise = torch.randn(B, E, generator=gen), torch.randn(B, E, generator=gen)
    tokens, t = torch.randn(B, 16, E, generator=gen), torch.rand(B, generator=gen)
    labels = torch.tensor([0, 1, 2, 3])
    cfg = ObjectiveConfig(proj_coeff=0.5, class_token_coeff=0.03)
    got = repa_loss(model.forward_features, x0, labels, [tokens], cfg, t=t, noise=noise, class_tokens=cls,
                    class_noise=cls_noise)

    tt = t.view(B, 1, 1, 1)
    x_t, v = (1 - tt) * x0 + tt * noise, noise - x0
    c_t, v_c = (1 - t[:, None]) * cls + t[:, None] * cls_noise, cls_noise - cls
    out = model.forward_features(x_t, t, labels, class_token=c_t, project=True)
    denoise = ((out.prediction - v) ** 2).mean()
    denoise_cls = ((out.class_token - v_c) ** 2).mean()
    dense = torch.cat([cls[:, None], tokens], dim=1)
    proj = -(F.normalize(out.projected[0], dim=-1) * F.normalize(dense, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(got.terms["denoise_loss"], denoise.detach())
    torch.testing.assert_close(got.terms["cls_loss"], denoise_cls.detach())
    torch.testing.assert_close(got.terms["align_loss"], proj.detach())
    torch.testing.assert_close(got.total, denoise + 0.5 * proj + 0.03 * denoise_cls)
    model.zero_grad()
    got.total.backward()
    for name in ("cls_projectors2.weight", "wg_norm.weight", "final_layer.linear_cls.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def _reference_euler(model, x, cls, y, steps, w, interval, null):
    """Euler over the concatenated state, guidance as REG's sampler: (u + w (c - u)) for image and class token."""
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for t_cur, t_next in zip(times[:-1], times[1:]):
        guided = interval[0] <= t_cur <= interval[1]
        xi, ci, yi = (torch.cat([x, x]), torch.cat([cls, cls]), torch.cat([y, torch.full_like(y, null)])) if guided \
            else (x, cls, y)
        out = model.forward_features(xi, torch.full((len(yi),), float(t_cur), dtype=torch.float64), yi,
                                     class_token=ci)
        v, vc = out.prediction, out.class_token
        if guided:
            v = v[len(y):] + w * (v[: len(y)] - v[len(y):])
            vc = vc[len(y):] + w * (vc[: len(y)] - vc[len(y):])
        x, cls = x + (t_next - t_cur) * v, cls + (t_next - t_cur) * vc
    return x, cls


def _reference_euler_maruyama(model, x, cls, y, steps, w, null, step_noise, w_cls=None):
    """Martinser/REG ``euler_maruyama_sampler`` (linear path), written out: t from 1 to 0.04 in ``steps`` points,
    then 0; drift d = v - (1/2) g^2 s with g^2 = 2t and s = (-(1 - t) v - x) / t; the image guided with ``w``, the
    class token with ``w_cls`` (its ``cls_cfg_scale``; default ``w``, as its eval.sh) when > 0, else its conditional
    drift alone; noise sqrt(2t |dt|) eps except on the last step. ``step_noise(i)`` gives step i's (eps_x, eps_cls)."""
    w_cls = w if w_cls is None else w_cls
    times = torch.cat([torch.linspace(1.0, 0.04, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    B = len(y)
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        xi, ci, yi = torch.cat([x, x]), torch.cat([cls, cls]), torch.cat([y, torch.full_like(y, null)])
        out = model.forward_features(xi, torch.full((2 * B,), float(t_cur), dtype=torch.float64), yi,
                                     class_token=ci)
        v, vc = out.prediction, out.class_token
        d = v - t_cur * ((-(1 - t_cur) * v - xi) / t_cur)
        dc = vc - t_cur * ((-(1 - t_cur) * vc - ci) / t_cur)
        d = d[B:] + w * (d[:B] - d[B:])
        dc = dc[B:] + w_cls * (dc[:B] - dc[B:]) if w_cls > 0 else dc[:B]
        x, cls = x + d * dt, cls + dc * dt
        if i < steps - 1:
            ex, ec = step_noise(i)
            x, cls = x + torch.sqrt(2 * t_cur) * ex * abs(dt) ** 0.5, cls + torch.sqrt(2 * t_cur) * ec * abs(dt) ** 0.5
    return x, cls


def test_reg_euler_integrates_image_and_class_token_jointly():
    model = _reg_model().double().eval()
    gen = torch.Generator().manual_seed(3)
    x1, c1 = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randn(3, 16, generator=gen,
                                                                                      dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    got_x, got_c = sample_with_class_token(model, x1, y, sampler="euler", steps=6, cfg_scale=1.7,
                                           guidance_interval=(0.0, 0.7), class_token_noise=c1)
    want_x, want_c = _reference_euler(model, x1, c1, y, 6, 1.7, (0.0, 0.7), model.config.null_class)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_c, want_c)
    torch.testing.assert_close(sample(model, x1, y, sampler="euler", steps=6, cfg_scale=1.7,
                                      guidance_interval=(0.0, 0.7), class_token_noise=c1), want_x)
    # a different start for the class token changes the image: the two are generated together
    other = sample(model, x1, y, sampler="euler", steps=6, class_token_noise=-c1)
    assert not torch.allclose(other, sample(model, x1, y, sampler="euler", steps=6, class_token_noise=c1))
    with pytest.raises(ValueError, match="guided_channels"):
        sample(model, x1, y, steps=2, class_token_noise=c1, guided_channels=1)


def _reg_sde_against_reference(seed: int, **cls_scale):
    """``sample_with_class_token`` (SDE, 5 steps, guidance 2.3) and the written-out reference on the same start and
    step noise: the joint state's step noise is one (B, C*H*W + E) draw per step, its first C*H*W entries the
    image's."""
    model = _reg_model().double().eval()
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    c1 = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    y, steps = torch.tensor([1, 2]), 5
    got_x, got_c = sample_with_class_token(model, x1, y, sampler="sde", steps=steps, cfg_scale=2.3, **cls_scale,
                                           class_token_noise=c1, generator=torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)

    def step_noise(i):
        eps = torch.randn(2, 64 + 16, generator=replay, dtype=torch.float64)
        return eps[:, :64].reshape(2, 1, 8, 8), eps[:, 64:]
    want_x, want_c = _reference_euler_maruyama(model, x1, c1, y, steps, 2.3, model.config.null_class, step_noise,
                                               **{"w_cls": v for v in cls_scale.values()})
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_c, want_c)
    return model, x1, c1, y, steps, got_x


def test_reg_sde_is_the_reference_euler_maruyama():
    _reg_sde_against_reference(4)


@pytest.mark.parametrize("w_cls", [0.0, 1.0, 4.0])
def test_reg_class_token_has_its_own_guidance_scale(w_cls):
    """``cls_cfg_scale``: the class token's scale where the image is guided; 0 (and 1) mean its conditional drift."""
    model, x1, c1, y, steps, got_x = _reg_sde_against_reference(5, cls_cfg_scale=w_cls)
    same = sample(model, x1, y, sampler="sde", steps=steps, cfg_scale=2.3, class_token_noise=c1,
                  generator=torch.Generator().manual_seed(9))
    assert torch.equal(same, sample(model, x1, y, sampler="sde", steps=steps, cfg_scale=2.3, cls_cfg_scale=None,
                                    class_token_noise=c1, generator=torch.Generator().manual_seed(9)))
    if w_cls != 2.3:
        assert not torch.allclose(same, got_x)       # the class token's scale steers the image


def test_reg_cls_cfg_scale_zero_is_conditional_only_and_refused_elsewhere():
    from repa.config import SampleConfig
    from repa.guidance import GuidedModel
    model = _reg_model().double().eval()
    gen = torch.Generator().manual_seed(6)
    x1, c1, y = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randn(2, 16, generator=gen,
                                                                                         dtype=torch.float64), \
        torch.tensor([0, 2])
    # one guided evaluation: the class token's part is exactly the conditional half's
    from repa.samplers import JointModel, pack_state
    joint = JointModel(model, (1, 8, 8))
    state = pack_state(x1, c1)
    guided = GuidedModel(joint, y, cfg_scale=3.0, tail_channels=16, tail_scale=0.0)(state, 0.5)
    t = torch.full((2,), 0.5, dtype=torch.float64)
    cond = model.forward_features(x1, t, y, class_token=c1)
    uncond = model.forward_features(x1, t, torch.full_like(y, model.config.null_class), class_token=c1)
    torch.testing.assert_close(guided[:, 64:], cond.class_token, rtol=0, atol=1e-12)   # batch 4 vs 2: ULPs
    torch.testing.assert_close(guided[:, :64], (uncond.prediction + 3.0 * (cond.prediction - uncond.prediction))
                               .flatten(1))
    # a network without a class token refuses the setting in one line; the settings file records it when set
    plain = build_model(tiny_model_config()).eval()
    with pytest.raises(ConfigError, match="cls_cfg_scale") as err:
        sample(plain, torch.randn(1, 1, 8, 8), torch.tensor([0]), steps=2, cls_cfg_scale=1.0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cls_cfg_scale"):
        sample(model, x1, y, steps=2, cls_cfg_scale=-1.0, class_token_noise=c1)
    from repa.samplers import resolve_sampling
    assert "cls_cfg_scale" not in resolve_sampling(model, SampleConfig()).as_settings()
    assert resolve_sampling(model, SampleConfig(cls_cfg_scale=0.0)).as_settings()["cls_cfg_scale"] == 0.0


# ---- teachers and config ------------------------------------------------------------------------------------------

def _tiny_dinov2(folder):
    import transformers
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
        image_size=56)).save_pretrained(folder)


def test_dinov2_class_token_is_the_final_norm_cls_token(tmp_path):
    """REG's ``x_norm_clstoken``: token 0 after DINOv2's final LayerNorm (transformers' ``pooler_output``)."""
    pytest.importorskip("transformers")
    from repa.encoders import load_encoder
    _tiny_dinov2(tmp_path / "dino")
    enc = load_encoder("dinov2-vit-b", resolution=8, token_grid=4, weights=str(tmp_path / "dino"))
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    tokens, cls = enc.tokens_and_class_token(images)
    torch.testing.assert_close(tokens, enc(images))
    out = enc.backbone.model(pixel_values=enc.preprocess(images))
    torch.testing.assert_close(cls, out.pooler_output)
    assert cls.shape == (2, 16)


def test_cnn_class_token_is_its_pooled_feature():
    from repa.encoders import get_spec, pool_tokens
    from repa.encoders.base import Encoder

    class Tokens(torch.nn.Module):                      # a stand-in backbone: 16 x 16 patches -> 8 features
        embed_dim = 8

        def forward(self, x):
            return F.avg_pool2d(x, 16).flatten(2).transpose(1, 2) @ torch.arange(24.0).reshape(3, 8)
    enc = Encoder(get_spec("efficientnet-lite0"), Tokens(), resolution=64, token_grid=4)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    tokens, cls = enc.tokens_and_class_token(images)
    torch.testing.assert_close(cls, tokens.mean(dim=1))
    torch.testing.assert_close(pool_tokens(tokens), tokens.mean(dim=1))


def _reg_config(run_dir, **kw):
    cfg = tiny_train_config(run_dir, encoders=("dinov2-vit-b",), model=tiny_model_config(class_token=True), **kw)
    return dataclasses.replace(cfg, objective=ObjectiveConfig(proj_coeff=0.5, class_token_coeff=0.03))


def test_reg_refuses_teachers_without_a_class_token(tmp_path):
    from repa.encoders import check_train_encoders
    cfg = dataclasses.replace(_reg_config(tmp_path), encoders=("jepa-vit-h",),
                              model=tiny_model_config(class_token=True, encoder_dims=(1280,)))
    with pytest.raises(ConfigError, match=r"^model.class_token: .*'jepa-vit-h' has none; use one of .*dinov2-vit-b"):
        check_train_encoders(cfg)
    for name, width in (("dinov2-vit-s", 384), ("efficientnet-lite0", 112)):
        check_train_encoders(dataclasses.replace(cfg, encoders=(name,), model=tiny_model_config(
            class_token=True, encoder_dims=(width,))))


@pytest.mark.parametrize("overrides,match", [
    ({"model.name": "DiT-S/2", "model.prediction": "epsilon", "objective.kind": "iddpm"}, "model.class_token"),
    ({"model.projector": "conv"}, "model.class_token"),
    ({"objective.target_norm": "spatial"}, "objective.target_norm"),
    ({"objective.attn_coeff": 0.5, "objective.attn_layers": (1,), "objective.attn_teacher_layers": (1,)},
     "objective.attn_coeff"),
    ({"encoders": ("dinov2-vit-b", "dinov2-vit-s"), "model.encoder_dims": (16, 16)}, "model.class_token"),
    ({"objective.class_token_coeff": -1.0}, "objective.class_token_coeff"),
])
def test_reg_options_are_validated_at_config_time(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match="^" + match):
        validate_train(apply_overrides(_reg_config(tmp_path), overrides))


def test_reg_presets_follow_the_reference_run():
    from repa.encoders import check_train_encoders
    from repa.presets import get_preset
    for name, depth in (("SiT-XL/2-REG-256", 8), ("SiT-B/2-REG-256", 4)):
        cfg = get_preset(name)
        validate_train(cfg)
        check_train_encoders(cfg)
        assert cfg.model.class_token and cfg.model.class_token_dim == 768 and cfg.encoders == ("dinov2-vit-b",)
        assert cfg.objective.class_token_coeff == 0.03 and cfg.objective.proj_coeff == 0.5
        assert cfg.model.encoder_depth == depth and "-reg-" in cfg.run_dir


# ---- training, checkpoints, generation ----------------------------------------------------------------------------

def test_reg_trains_with_a_live_dinov2_and_its_checkpoint_round_trips(tmp_path, tiny_dataset):
    pytest.importorskip("transformers")
    from repa.encoders import load_encoder
    from repa.evaluation.generate import generate_images
    _tiny_dinov2(tmp_path / "dino")
    enc = load_encoder("dinov2-vit-b", resolution=8, token_grid=4, weights=str(tmp_path / "dino"))
    cfg = _reg_config(tmp_path / "run", max_steps=6, log_every=2, ckpt_every=6, ema_decay=0.5)
    result = train(cfg, dataset=tiny_dataset, encoders=[enc], progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 6 and all(np.isfinite(r["loss"]) for r in records)
    assert all(r["cls_loss"] > 0 for r in records)           # REG's class-token loss is logged
    # the logged total is the sum of the logged terms
    for r in records:
        assert np.isclose(r["loss"], r["denoise_loss"] + 0.5 * r["align_loss"] + 0.03 * r["cls_loss"], rtol=1e-4)

    loaded = repa.load_model(result.checkpoint, which="model")
    assert loaded.config.class_token and loaded.train_config.objective.class_token_coeff == 0.03
    torch.manual_seed(cfg.seed)
    init = build_model(cfg.model)                      # the trainer seeds the same way before building
    for name in ("cls_projectors2.weight", "wg_norm.weight", "final_layer.linear_cls.weight"):
        assert not torch.equal(loaded.model.get_parameter(name), init.get_parameter(name)), f"{name} did not train"
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, raw["model"][key])

    # generation: the class token starts from its own per-sample stream; images do not depend on the batch size
    ema = repa.load_model(result.checkpoint)
    a = generate_images(ema, 4, seed=1, sampler="sde", steps=4, cfg_scale=1.5, batch_size=4)
    b = generate_images(ema, 4, seed=1, sampler="sde", steps=4, cfg_scale=1.5, batch_size=2)
    assert a.shape == (4, 1, 8, 8) and np.array_equal(a, b)


def test_reg_reference_layout_state_dict_loads(tmp_path):
    """A checkpoint in Martinser/REG's layout (``{"ema": ..., "args": ...}``, with ``cls_projectors2``,
    ``wg_norm``, ``final_layer.linear_cls`` and a (1, 1 + N, D) ``pos_embed``) is recognised as a REG network."""
    model = _reg_model()
    args = {"encoder_depth": 2, "num_classes": 3, "num_heads": 2}       # heads: not visible in the shapes
    torch.save({"ema": model.state_dict(), "args": args}, tmp_path / "reg.pt")
    loaded = repa.load_model(tmp_path / "reg.pt")
    assert loaded.config.class_token and loaded.config.num_tokens == 16 and loaded.config.class_token_dim == 16
    x, t, y, cls = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]), torch.randn(2, 16)
    torch.testing.assert_close(loaded.model.forward_features(x, t, y, class_token=cls).class_token,
                               model.forward_features(x, t, y, class_token=cls).class_token)


def test_reg_trains_from_a_cnn_token_cache_without_running_the_teacher(tmp_path):
    """With EfficientNet-Lite the class token is the pooled feature, so the token cache gives it too."""
    from repa.data.memory import ArrayDataset
    rng = np.random.default_rng(0)
    n, key = 16, "tokens:efficientnet-lite0@32/4"
    dataset = ArrayDataset(rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, n),
                           num_classes=3, latent_mean=rng.standard_normal((n, 4, 8, 8), dtype=np.float32),
                           latent_std=np.full((n, 4, 8, 8), 0.1, np.float32),
                           **{key: rng.standard_normal((n, 16, 112)).astype(np.float16)})
    cfg = tiny_train_config(tmp_path / "run", encoders=("efficientnet-lite0",), max_steps=4, ckpt_every=4,
                            model=tiny_model_config(in_channels=4, space="latent", encoder_dims=(112,),
                                                    class_token=True))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=32))

    class Refuse(torch.nn.Module):
        def forward(self, images):
            raise AssertionError("no teacher may run: the token cache gives the tokens and the pooled class token")
    result = train(cfg, dataset=dataset, encoders=[Refuse()], progress=False)
    # the alignment term ran on the cached tokens (after 4 steps its sign is still the luck of the draws)
    assert result.step == 4 and np.isfinite(result.metrics["loss"]) and result.metrics["align_loss"] != 0
    # the class-token noise depends on (seed, step) only: a run interrupted at step 2 ends with the same weights
    from repa.checkpoint import load_checkpoint
    cfg2 = dataclasses.replace(cfg, run_dir=str(tmp_path / "resumed"))
    train(cfg2, dataset=dataset, encoders=[Refuse()], progress=False, stop_at_step=2)
    resumed = train(cfg2, dataset=dataset, encoders=[Refuse()], progress=False)
    a, b = load_checkpoint(result.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
