"""REPA's successors as options of one objective (docs/VARIANTS.md): iREPA, SRA, HASTE.

Each formula is checked against an independent computation of its paper's definition (naive loops, numpy, a
hand-built attention), each config option against its validation, and each variant with a short CPU training run.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repa.config import ConfigError, ObjectiveConfig
from repa.objectives import validate as validate_train
from repa.losses import attention_alignment_loss, self_alignment_loss, spatial_normalize
from repa.models import build_model
from repa.models.sit import ConvProjector, SRAHead
from repa.objectives import repa_loss, self_alignment_targets, sra_weight
from repa.paths import get_path
from repa.training import train
from tests.conftest import tiny_model_config, tiny_train_config


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- iREPA: spatial normalisation and the conv projector ------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.0, 0.6, 1.0])
def test_spatial_normalize_matches_numpy_per_channel(gamma):
    y = torch.randn(3, 16, 5, dtype=torch.float64) * 2 + 0.7
    got = spatial_normalize(y, gamma).numpy()
    a = y.numpy()
    for b in range(3):
        for e in range(5):
            col = a[b, :, e]
            want = (col - gamma * col.mean()) / (np.std(col, ddof=1) + 1e-6)
            np.testing.assert_allclose(got[b, :, e], want, rtol=1e-5, atol=1e-6)
    if gamma == 1.0:      # all of the image-wide component removed: every channel has zero mean, unit spread
        np.testing.assert_allclose(got.mean(axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(got.std(axis=1, ddof=1), 1, atol=1e-4)


def test_conv_projector_equals_a_naive_neighbourhood_sum():
    torch.manual_seed(0)
    proj = ConvProjector(hidden_size=6, encoder_dim=4, kernel=3).double()
    side, D = 4, 6
    x = torch.randn(2, side * side, D, dtype=torch.float64)
    got = proj(x)                                                    # (B, N, E)
    w, b = proj.conv.weight, proj.conv.bias                          # (E, D, 3, 3), (E,)
    grid = x.reshape(2, side, side, D)
    want = torch.zeros(2, side, side, 4, dtype=torch.float64)
    for i in range(side):
        for j in range(side):
            acc = b.clone().expand(2, 4).clone()
            for di in range(3):
                for dj in range(3):
                    r, c = i + di - 1, j + dj - 1
                    if 0 <= r < side and 0 <= c < side:                 # zero padding outside the grid
                        acc += grid[:, r, c] @ w[:, :, di, dj].T
            want[:, i, j] = acc
    torch.testing.assert_close(got, want.reshape(2, side * side, 4))


def test_irepa_objective_aligns_with_the_normalised_tokens():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(projector="conv"))
    cfg = ObjectiveConfig(proj_coeff=0.5, target_norm="spatial", target_norm_gamma=0.6)
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.rand(4)
    labels, tokens = torch.tensor([0, 1, 2, 0]), torch.randn(4, 16, 16) + 3.0
    got = repa_loss(model.forward_features, x0, labels, [tokens], cfg, t=t, noise=noise)
    plain = repa_loss(model.forward_features, x0, labels, [spatial_normalize(tokens, 0.6)],
                      dataclasses.replace(cfg, target_norm="none"), t=t, noise=noise)
    unnormalised = repa_loss(model.forward_features, x0, labels, [tokens],
                             dataclasses.replace(cfg, target_norm="none"), t=t, noise=noise)
    torch.testing.assert_close(got.terms["align_loss"], plain.terms["align_loss"])
    assert not torch.allclose(got.terms["align_loss"], unnormalised.terms["align_loss"])     # the option changes the target
    got.total.backward()
    assert model.projectors[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("field,value,match", [
    ("model.projector", "linear", "model.projector"),
    ("model.projector_kernel", 2, "model.projector_kernel"),
    ("objective.target_norm", "zscore", "objective.target_norm"),
    ("objective.target_norm_gamma", 1.5, "objective.target_norm_gamma"),
])
def test_irepa_options_are_validated_at_config_time(tmp_path, field, value, match):
    from repa.config import apply_overrides
    cfg = apply_overrides(tiny_train_config(tmp_path), {field: value})
    with pytest.raises(ConfigError, match=match):
        validate_train(cfg)


def test_irepa_trains_and_its_checkpoint_loads(tmp_path, tiny_dataset, teacher):
    import repa
    cfg = tiny_train_config(tmp_path / "run", model=tiny_model_config(projector="conv"), max_steps=30, log_every=5,
                            ckpt_every=30)
    cfg = dataclasses.replace(cfg, objective=ObjectiveConfig(target_norm="spatial"))
    result = train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    records = _records(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["align_loss"] < records[0]["align_loss"]
    loaded = repa.load_model(result.checkpoint)
    assert loaded.config.projector == "conv" and isinstance(loaded.model.projectors[0], ConvProjector)


# ---- SRA: self-alignment with the EMA at lower noise ----------------------------------------------------------------
# The official definitions (vvvvvjdy/SRA at 1723f85069408f6df7d11db35549575c97bfa5b2), written out here:
# ``SiT-SRA/loss.py`` Simpleloss: "sml1" = smooth_l1_loss(a, b, beta=0.05) (mean), "cos" = 1 - cosine_similarity(a, b)
# (dim=1 of (B, N, D): the tokens); ``SiT-SRA/train.py``: sml1 weighted 2 * 0.1 ** (((epoch - 149) / 1000 + 1) if
# epoch > 149 else 1) at 256 px, cos weighted 0.5; ``SiT-SRA/models/sit.py`` SimpleHead: Linear(D, 2D) - SiLU -
# Linear(2D, D) as ``ap_head.linear1`` / ``ap_head.linear2``.

def _sra_objective(**kw):
    return ObjectiveConfig(proj_coeff=kw.pop("proj_coeff", 2.0), target="self", self_depth=3, self_time_gap=0.2, **kw)


def _smooth_l1_written_out(a, b, beta=0.05):
    d = (a - b).abs()
    return torch.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).mean()


def _channel_cosine_written_out(a, b):
    """1 - cos along the tokens (dim 1), one per (sample, channel), then the mean: torch's default dim=1."""
    num = (a * b).sum(dim=1)
    return (1 - num / (a.norm(dim=1) * b.norm(dim=1))).mean()


def _offset_tokens(seed, shape=(3, 16, 8)):
    """Random tokens plus a per-channel offset shared by every token (what separates the two cosines)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) + 3 * torch.randn(shape[0], 1, shape[2], generator=gen)


def test_sra_losses_are_the_official_formulas_written_out():
    a, b = _offset_tokens(0), _offset_tokens(1) * 0.05        # many differences inside and outside beta
    torch.testing.assert_close(self_alignment_loss([a], [b], "smooth_l1").mean(), _smooth_l1_written_out(a, b))
    torch.testing.assert_close(self_alignment_loss([a], [b], "cosine").mean(), _channel_cosine_written_out(a, b))
    # the per-channel cosine is not REPA's per-token one (which is not SRA's): offsets tell them apart
    per_token = (1 - F.cosine_similarity(a, b, dim=-1)).mean()
    assert abs(float(per_token) - float(_channel_cosine_written_out(a, b))) > 1e-2
    with pytest.raises(ValueError, match="unknown SRA loss"):
        self_alignment_loss([a], [b], "l2")


def test_sra_weight_is_the_official_epoch_schedule():
    o = _sra_objective(self_epoch_steps=10, self_decay_start=149, self_decay_epochs=1000)
    for epoch in (0, 1, 148, 149, 150, 400, 800):
        official = 2 * (0.1 ** (((epoch - 149) / 1000 + 1) if epoch > 149 else 1))
        for step in (epoch * 10, epoch * 10 + 9):           # every step of the epoch
            assert o.proj_coeff * sra_weight(o, step) == pytest.approx(official, rel=1e-12)
    assert sra_weight(_sra_objective(self_loss="cosine"), 10 ** 7) == 1.0      # the cosine term has no schedule
    from repa.presets import get_preset
    for name, start, span in (("SiT-XL/2-SRA-256", 149, 1000), ("SiT-B/2-SRA-256", 149, 1000)):
        c = get_preset(name)
        assert (c.objective.self_loss, c.objective.proj_coeff, c.model.projector) == ("smooth_l1", 2.0, "sra")
        assert (c.objective.self_decay_start, c.objective.self_decay_epochs) == (start, span)
        assert c.objective.self_epoch_steps == 1281167 // 256 == 5004


def test_sra_head_has_the_official_layout_and_loads_an_official_ap_head():
    model = build_model(tiny_model_config(encoder_dims=(32,), projector="sra"))
    head = model.projectors[0]
    assert isinstance(head, SRAHead)
    # an official checkpoint's ap_head, written out with its names and shapes (D = 32: Linear(D, 2D), Linear(2D, D))
    gen = torch.Generator().manual_seed(0)
    official = {"ap_head.linear1.weight": torch.randn(64, 32, generator=gen),
                "ap_head.linear1.bias": torch.randn(64, generator=gen),
                "ap_head.linear2.weight": torch.randn(32, 64, generator=gen),
                "ap_head.linear2.bias": torch.randn(32, generator=gen)}
    head.load_state_dict({k.removeprefix("ap_head."): v for k, v in official.items()}, strict=True)
    x = torch.randn(2, 16, 32, generator=gen)
    hidden = x @ official["ap_head.linear1.weight"].T + official["ap_head.linear1.bias"]
    want = F.silu(hidden) @ official["ap_head.linear2.weight"].T + official["ap_head.linear2.bias"]
    torch.testing.assert_close(head(x), want)
    from repa.presets import get_preset
    from repa.models.sit import build_projector
    xl = get_preset("SiT-XL/2-SRA-256").model
    assert sum(p.numel() for p in build_projector(1152, 2048, 1152, "sra").parameters()) == 2 * (1152 * 2304) + 2304 + 1152
    assert xl.projector == "sra"


def test_sra_targets_are_the_ema_block_at_the_lower_noise_level_in_float32():
    torch.manual_seed(0)
    ema = build_model(tiny_model_config(encoder_dims=(32,)))
    cfg = _sra_objective()
    x0, noise, labels = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    t, u = torch.tensor([0.05, 0.5, 0.9, 1.0]), torch.tensor([0.9, 0.5, 0.0, 1.0])
    (got,) = self_alignment_targets(ema.forward_features, x0, noise, labels, t, u, cfg)
    t_ema = torch.tensor([0.0, 0.4, 0.9, 0.8])                  # t - 0.2 u, clamped at 0
    x_ema = (1 - t_ema).view(-1, 1, 1, 1) * x0 + t_ema.view(-1, 1, 1, 1) * noise   # the linear interpolant
    want = ema.forward_features(x_ema, t_ema, labels, layers=(3,)).hidden[3]
    torch.testing.assert_close(got, want)
    assert not got.requires_grad
    # the reference's EMA runs outside the mixed-precision autocast: so do these targets
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (mixed,) = self_alignment_targets(ema.forward_features, x0, noise, labels, t, u, cfg)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, want)


@pytest.mark.parametrize("kind", ["smooth_l1", "cosine"])
def test_sra_loss_is_the_official_term_to_the_ema_and_trains_only_the_student(kind):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(encoder_dims=(32,), projector="sra"))
    ema = build_model(tiny_model_config(encoder_dims=(32,), projector="sra")).requires_grad_(False)
    cfg = _sra_objective(self_loss=kind)
    x0, noise, labels = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    t, u = torch.rand(4), torch.rand(4)
    out = repa_loss(model.forward_features, x0, labels, None, cfg, t=t, noise=noise, ema_features=ema.forward_features,
                    gap_uniforms=u, proj_coeff=0.7)
    # by hand: student = SRA head(block encoder_depth at t), target = EMA block 3 (no head) at t - 0.2 u
    path = get_path("linear")
    student = model.forward_features(path.interpolate(x0, noise, t), t, labels, project=True)
    t_ema = (t - 0.2 * u).clamp(0, 1)
    target = ema.forward_features(path.interpolate(x0, noise, t_ema), t_ema, labels, layers=(3,)).hidden[3]
    written = _smooth_l1_written_out if kind == "smooth_l1" else _channel_cosine_written_out
    want = written(student.projected[0], target)
    torch.testing.assert_close(out.terms["align_loss"], want.detach())
    torch.testing.assert_close(out.total, out.terms["denoise_loss"] + 0.7 * want.detach())
    out.total.backward()
    assert model.projectors[0].linear1.weight.grad.abs().sum() > 0
    assert model.x_embedder.proj.weight.grad.abs().sum() > 0     # through the blocks below the projector
    assert all(p.grad is None for p in ema.parameters())
    with pytest.raises(ValueError, match="ema_features"):
        repa_loss(model.forward_features, x0, labels, None, cfg, t=t, noise=noise)


def _sra_train_config(run_dir, **kw):
    cfg = tiny_train_config(run_dir, model=tiny_model_config(encoder_dims=(32,), projector="sra"), encoders=(), **kw)
    return dataclasses.replace(cfg, objective=_sra_objective(self_epoch_steps=4, self_decay_start=1,
                                                             self_decay_epochs=2))


@pytest.mark.parametrize("field,value,match", [
    ("encoders", ("patch-teacher",), "encoders"),
    ("model.encoder_dims", (16,), "model.encoder_dims"),
    ("objective.self_depth", 2, "objective.self_depth"),
    ("objective.self_time_gap", 1.5, "objective.self_time_gap"),
    ("objective.self_loss", "l2", "objective.self_loss"),
    ("objective.self_epoch_steps", 0, "objective.self_epoch_steps"),
    ("objective.self_decay_epochs", 0, "objective.self_decay_start"),
    ("model.projector", "mlp2", "model.projector"),
    ("objective.kind", "iddpm", "objective"),
])
def test_sra_options_are_validated_at_config_time(tmp_path, field, value, match):
    from repa.config import apply_overrides
    cfg = apply_overrides(_sra_train_config(tmp_path), {field: value})
    with pytest.raises(ConfigError, match=match):
        validate_train(cfg)


def test_a_config_written_before_the_sra_fields_still_loads():
    from repa.config import to_dict, train_config_from_dict
    raw = to_dict(_sra_train_config("runs/x"))
    for key in ("self_loss", "self_epoch_steps", "self_decay_start", "self_decay_epochs"):
        del raw["objective"][key]
    raw["model"]["projector"] = "mlp"
    cfg = train_config_from_dict(json.loads(json.dumps(raw)))
    assert cfg.objective.self_loss == "smooth_l1" and cfg.model.projector == "mlp"
    validate_train(cfg)


def test_sra_trains_without_any_teacher_on_its_schedule_and_resumes_exactly(tmp_path, tiny_dataset):
    cfg = _sra_train_config(tmp_path / "full", max_steps=20, log_every=1, ckpt_every=10)
    train(cfg, dataset=tiny_dataset, encoders=[], progress=False)
    records = _records(tmp_path / "full")
    assert all(np.isfinite(r["loss"]) and r["align_loss"] > 0 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    # the weight follows the epoch schedule, epochs of self_epoch_steps = 4 steps: 2 * 0.1 ** f(step // 4)
    o = cfg.objective
    for r in records:
        step = r["step"] - 1                    # the record of step k is written once k steps are done
        assert r["lam"] == pytest.approx(2.0 * sra_weight(o, step), rel=1e-6)
    assert records[0]["lam"] == pytest.approx(0.2) and records[-1]["lam"] < 0.2 * 0.1 ** 1.5
    # the time-gap draws depend on (seed, step) only: an interrupted run ends with the same weights
    run = tmp_path / "resumed"
    cfg2 = dataclasses.replace(cfg, run_dir=str(run))
    train(cfg2, dataset=tiny_dataset, encoders=[], progress=False, stop_at_step=5)
    train(cfg2, dataset=tiny_dataset, encoders=[], progress=False)
    from repa.checkpoint import load_checkpoint
    a, b = load_checkpoint(tmp_path / "full/checkpoints/00000020.pt"), load_checkpoint(run / "checkpoints/00000020.pt")
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"


# ---- HASTE: attention-map alignment ---------------------------------------------------------------------------------

def test_attention_alignment_loss_matches_a_naive_cross_entropy():
    torch.manual_seed(0)
    s = [torch.randn(2, 3, 5, 5, dtype=torch.float64) for _ in range(2)]     # model: 3 heads
    p = [torch.randn(2, 2, 5, 5, dtype=torch.float64).softmax(-1) for _ in range(2)]   # teacher: 2 heads
    got = attention_alignment_loss(s, p)
    want = torch.zeros(2, dtype=torch.float64)
    for si, pi in zip(s, p):
        for b in range(2):
            total = 0.0
            for h in range(2):                              # the model's first heads, one to one
                for i in range(5):
                    logq = si[b, h, i] - torch.logsumexp(si[b, h, i], 0)
                    total += -(pi[b, h, i] * logq).sum()
            want[b] += total / (2 * 5)
    torch.testing.assert_close(got.double(), want / 2, rtol=1e-5, atol=1e-6)   # computed in float32
    # the minimum over the model's logits is reached at the teacher's distribution (cross-entropy = entropy)
    at_teacher = attention_alignment_loss([torch.log(q) for q in p], p)
    assert (at_teacher < got).all()
    with pytest.raises(ValueError, match="heads"):
        attention_alignment_loss([torch.randn(2, 1, 5, 5)], [p[0]])


def test_sit_attention_logits_are_q_k_over_sqrt_d_and_leave_the_output_unchanged():
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    for block in model.blocks:      # non-zero adaLN so that the blocks do something
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1])
    plain = model.forward_features(x, t, y, layers=(1,))
    got = model.forward_features(x, t, y, layers=(1,), attention=(2,))
    torch.testing.assert_close(got.prediction, plain.prediction, rtol=1e-5, atol=1e-6)
    # block 2's logits by hand from its input (block 1's output) and its weights
    block, h = model.blocks[1], plain.hidden[1]
    c = model.embed_time(t) + model.y_embedder(y)
    shift, scale = block.adaLN_modulation(c).chunk(6, dim=-1)[:2]
    a = block.norm1(h) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    q, k, _ = block.attn.qkv(a).chunk(3, dim=-1)
    heads, hd = 2, 16
    q, k = (z.reshape(2, 16, heads, hd).transpose(1, 2) for z in (q, k))
    torch.testing.assert_close(got.attention[2], q @ k.transpose(-2, -1) / hd ** 0.5, rtol=1e-5, atol=1e-5)


def _tiny_dinov2(folder, layers=2, heads=2):
    import transformers
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=2, patch_size=14,
        image_size=56)).save_pretrained(folder)


def test_dinov2_attention_maps_equal_the_softmax_of_patch_logits(tmp_path):
    """HASTE's modified DINOv2 returns q k^T * scale over patch tokens; ours renormalises transformers' weights.
    The two are compared here through the layer's own weights, read with a hook."""
    pytest.importorskip("transformers")
    from repa.encoders import load_encoder
    _tiny_dinov2(tmp_path / "dino")
    enc = load_encoder("dinov2-vit-b", resolution=8, token_grid=4, weights=str(tmp_path / "dino"))
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    seen = {}
    layer = enc.backbone.model.encoder.layer[1]
    handle = layer.attention.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0] if args else
                                                       kwargs["hidden_states"]), with_kwargs=True)
    tokens, maps = enc.tokens_and_attention(images, (2,))
    handle.remove()
    torch.testing.assert_close(tokens, enc(images))
    att = layer.attention
    query, key = ((att.q_proj, att.k_proj) if hasattr(att, "q_proj")           # transformers 5
                  else (att.attention.query, att.attention.key))               # transformers 4
    x = seen["x"]                                                      # (B, 1 + N, D), after norm1
    q = query(x).reshape(2, 17, 2, 8).transpose(1, 2)
    k = key(x).reshape(2, 17, 2, 8).transpose(1, 2)
    logits = (q @ k.transpose(-2, -1)) * 8 ** -0.5
    torch.testing.assert_close(maps[0], logits[:, :, 1:, 1:].softmax(-1), rtol=1e-4, atol=1e-5)
    assert maps[0].shape == (2, 2, 16, 16)


def _haste_config(run_dir, **kw):
    cfg = tiny_train_config(run_dir, encoders=("dinov2-vit-b",), **kw)
    return dataclasses.replace(cfg, objective=ObjectiveConfig(proj_coeff=0.5, attn_coeff=0.5, attn_layers=(1, 2),
                                                              attn_teacher_layers=(1, 2)))


def test_haste_refuses_teachers_without_attention_maps(tmp_path):
    from repa.encoders import check_train_encoders
    cfg = dataclasses.replace(_haste_config(tmp_path), encoders=("efficientnet-lite0",),
                              model=tiny_model_config(encoder_dims=(112,)))
    with pytest.raises(ConfigError, match=r"objective.attn_coeff: .*efficientnet-lite0.*dinov2-vit-b"):
        check_train_encoders(cfg)
    wide = dataclasses.replace(_haste_config(tmp_path), model=tiny_model_config(encoder_dims=(768,)))
    with pytest.raises(ConfigError, match="model.num_heads"):          # 2 heads cannot match DINOv2-B's 12
        check_train_encoders(wide)
    for field, value in [("objective.attn_layers", (1,)), ("objective.attn_layers", (9, 1))]:
        from repa.config import apply_overrides
        with pytest.raises(ConfigError, match="objective.attn_layers"):
            validate_train(apply_overrides(_haste_config(tmp_path), {field: value}))


def test_haste_loss_reaches_the_aligned_blocks_and_stops_with_the_schedule(tmp_path, tiny_dataset):
    pytest.importorskip("transformers")
    from repa.encoders import load_encoder
    _tiny_dinov2(tmp_path / "dino")
    enc = load_encoder("dinov2-vit-b", resolution=8, token_grid=4, weights=str(tmp_path / "dino"))
    cfg = _haste_config(tmp_path / "run", max_steps=20, log_every=5, ckpt_every=20)
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, align_stop_step=10))
    # one objective evaluation: the attention term is there and its gradient reaches the aligned blocks
    torch.manual_seed(0)
    model = build_model(cfg.model)
    images = torch.as_tensor(tiny_dataset.get_batch(np.arange(4))["image"])
    tokens, maps = enc.tokens_and_attention(images, (1, 2))
    x0, noise, t = images.float() / 127.5 - 1, torch.randn(4, 1, 8, 8), torch.rand(4)
    out = repa_loss(model.forward_features, x0, torch.tensor([0, 1, 2, 0]), [tokens], cfg.objective, t=t,
                    noise=noise, attn_coeff=0.5, teacher_attention=maps)
    assert out.terms["attn_loss"] is not None and out.terms["attn_loss"] > 0
    without = repa_loss(model.forward_features, x0, torch.tensor([0, 1, 2, 0]), [tokens], cfg.objective, t=t,
                        noise=noise, attn_coeff=0.0)
    torch.testing.assert_close(out.total.detach(), without.total.detach() + 0.5 * out.terms["attn_loss"])
    model.zero_grad()
    (out.total - without.total).backward()                   # the attention term alone
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[2].attn.qkv.weight.grad is None or model.blocks[2].attn.qkv.weight.grad.abs().sum() == 0
    # training: the teacher runs live (no token cache), both terms stop at step 10
    train(cfg, dataset=tiny_dataset, encoders=[enc], progress=False)
    records = _records(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[0]["align_loss"] != 0 and records[-1]["align_loss"] == 0 and records[-1]["lam"] == 0
    assert records[0]["attn_loss"] > 0 and records[-1]["attn_loss"] == 0       # the HASTE term is logged too


# ---- the default job's setting: latent-space tiny SiT, CNN teacher tokens from the token cache ----------------------

@pytest.mark.parametrize("variant", ["irepa", "sra"])
def test_variants_train_in_latent_space_from_a_cnn_token_cache(tmp_path, variant):
    """iREPA reads EfficientNet-Lite tokens (B, N, E) from the cache like REPA; SRA needs no tokens at all."""
    from repa.data.memory import ArrayDataset
    rng = np.random.default_rng(0)
    n = 16
    key = "tokens:efficientnet-lite0@32/4"
    dataset = ArrayDataset(rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, n),
                           num_classes=3, latent_mean=rng.standard_normal((n, 4, 8, 8), dtype=np.float32),
                           latent_std=np.full((n, 4, 8, 8), 0.1, np.float32),
                           **{key: rng.standard_normal((n, 16, 112)).astype(np.float16)})
    cfg = tiny_train_config(tmp_path / "run", encoders=("efficientnet-lite0",), max_steps=4, ckpt_every=4,
                            model=tiny_model_config(in_channels=4, space="latent", encoder_dims=(112,)))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=32))
    if variant == "irepa":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, projector="conv"),
                                  objective=dataclasses.replace(cfg.objective, target_norm="spatial"))
    else:
        cfg = dataclasses.replace(cfg, encoders=(), model=dataclasses.replace(cfg.model, encoder_dims=(32,)),
                                  objective=_sra_objective())

    class Refuse(torch.nn.Module):
        def forward(self, images):
            raise AssertionError("no teacher may run: the token cache (iREPA) or the EMA (SRA) gives the targets")
    result = train(cfg, dataset=dataset, encoders=[Refuse()] if variant == "irepa" else [], progress=False)
    align = result.metrics["align_loss"]      # REPA's term: a negative cosine; SRA's smooth-L1: positive
    assert result.step == 4 and np.isfinite(result.metrics["loss"]) and (align < 0 if variant == "irepa" else align > 0)
