"""DiT: registry, released layout and loading, timestep conditioning, the iddpm REPA loss and a short training run."""
import argparse
import dataclasses
import json
import warnings

import pytest
import torch

import repa
from repa.checkpoint import infer_model_config
from repa.config import ConfigError, ObjectiveConfig
from repa.config_validate import validate_objective
from repa.diffusion import iddpm_repa_loss, timesteps_from_time
from repa.objectives import repa_loss
from repa.models import MODELS, build_model, model_config
from repa.models.dit import DiT
from repa.models.released import resolve_origin
from repa.training import train
from tests.conftest import tiny_train_config

DIT_NAMES = [name for name in MODELS if name.startswith("DiT-")]
IDDPM = ObjectiveConfig(kind="iddpm", proj_coeff=0.5)


def _tiny_dit(**overrides):
    kwargs = dict(depth=3, hidden_size=64, num_heads=1, input_size=8, in_channels=1, num_classes=3,
                  encoder_depth=2, encoder_dims=(16,), projector_dim=32, space="pixel")
    kwargs.update(overrides)
    return model_config("DiT-S/2", **kwargs)


def _randomised(model, seed=0):
    """Break adaLN-Zero so that every layer shapes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _released_dit_xl2_layout():
    """Keys and shapes of the released DiT-XL/2 256x256 state dict (facebookresearch/DiT, 32x32x4 latents)."""
    layout = {"pos_embed": (1, 256, 1152), "x_embedder.proj.weight": (1152, 4, 2, 2), "x_embedder.proj.bias": (1152,),
              "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.0.bias": (1152,),
              "t_embedder.mlp.2.weight": (1152, 1152), "t_embedder.mlp.2.bias": (1152,),
              "y_embedder.embedding_table.weight": (1001, 1152),
              "final_layer.linear.weight": (32, 1152), "final_layer.linear.bias": (32,),
              "final_layer.adaLN_modulation.1.weight": (2304, 1152), "final_layer.adaLN_modulation.1.bias": (2304,)}
    for i in range(28):
        layout.update({f"blocks.{i}.attn.qkv.weight": (3456, 1152), f"blocks.{i}.attn.qkv.bias": (3456,),
                       f"blocks.{i}.attn.proj.weight": (1152, 1152), f"blocks.{i}.attn.proj.bias": (1152,),
                       f"blocks.{i}.mlp.fc1.weight": (4608, 1152), f"blocks.{i}.mlp.fc1.bias": (4608,),
                       f"blocks.{i}.mlp.fc2.weight": (1152, 4608), f"blocks.{i}.mlp.fc2.bias": (1152,),
                       f"blocks.{i}.adaLN_modulation.1.weight": (6912, 1152),
                       f"blocks.{i}.adaLN_modulation.1.bias": (6912,)})
    return layout


def test_registry_has_every_dit_size_and_patch_with_learned_sigma():
    assert sorted(DIT_NAMES) == sorted(f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8))
    cfg = model_config("DiT-XL/2")
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, 2)
    assert cfg.learn_sigma and cfg.out_channels == 8 and not model_config("SiT-XL/2").learn_sigma


@pytest.mark.parametrize("name", DIT_NAMES)
def test_every_dit_builds_tiny_with_2c_outputs_and_projectors(name):
    patch = MODELS[name]["patch_size"]
    cfg = model_config(name, depth=2, hidden_size=32, num_heads=2, input_size=2 * patch, in_channels=3,
                       num_classes=5, encoder_depth=1, encoder_dims=(7,), projector_dim=16)
    model = build_model(cfg)
    assert isinstance(model, DiT)
    assert cfg.prediction == "epsilon" and cfg.learn_sigma
    out = model.forward_features(torch.randn(2, 3, cfg.input_size, cfg.input_size), torch.tensor([0.0, 0.999]),
                                 torch.tensor([0, 5]), project=True)
    assert out.prediction.shape == (2, 6, cfg.input_size, cfg.input_size)
    assert out.projected[0].shape == (2, cfg.num_tokens, 7)


def test_dit_xl2_has_the_released_layout_and_is_inferred_from_it():
    with torch.device("meta"):
        model = build_model(model_config("DiT-XL/2", encoder_dims=()))
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == _released_dit_xl2_layout()
    inferred = resolve_origin(infer_model_config(state), path="weights/DiT-XL-2-256x256.pt")
    assert inferred == model_config("DiT-XL/2", encoder_dims=(), encoder_depth=8)
    assert resolve_origin(infer_model_config(state), path="SiT-XL-2-256x256.pt").name == "SiT-XL/2"
    with pytest.warns(UserWarning, match="may be a released DiT or a released SiT"):
        assert resolve_origin(infer_model_config(state), path="weights.pt").name == "SiT-XL/2"
    assert resolve_origin(infer_model_config(state), "dit", path="weights.pt") == inferred


def test_dit_conditions_on_the_timestep_index():
    """DiT(x, t) equals the same weights as a SiT (which embeds t itself) evaluated at 1000 t."""
    dit = _randomised(build_model(_tiny_dit())).eval()
    sit = build_model(dataclasses.replace(dit.config, name="SiT-S/2"))
    sit.load_state_dict(dit.state_dict())
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 3])
    t = torch.tensor([0.0, 0.25, 0.999], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(dit(x, t, y), sit(x, t * 1000, y), atol=1e-6)
        assert not torch.allclose(dit(x, t, y), sit(x, t, y), atol=1e-3)


def test_released_dit_state_dict_loads_and_gives_same_outputs(tmp_path):
    model = _randomised(build_model(_tiny_dit(encoder_dims=(), num_classes=10))).eval()   # 10 + null rows
    path = tmp_path / "DiT-XL-2-256x256.pt"                     # a bare state dict, named like the release
    torch.save(model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = repa.load_model(path)
    assert isinstance(loaded.model, DiT) and loaded.config.learn_sigma and loaded.config.num_classes == 10
    assert loaded.config.prediction == "epsilon"
    assert loaded.train_config is None and not loaded.model.training
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.7], dtype=torch.float64), torch.tensor([2, 10])
    with torch.no_grad():
        ref = model(x, t, y)
        assert torch.count_nonzero(ref) > 0 and torch.equal(ref, loaded.model(x, t, y))
    # the training-script layout (model/ema/opt/args) with args.model = "DiT-..." loads as a DiT too
    args = argparse.Namespace(model="DiT-S/2", num_classes=10)
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": {}, "args": args},
               tmp_path / "0010000.pt")
    assert isinstance(repa.load_model(tmp_path / "0010000.pt").model, DiT)


def test_iddpm_objective_needs_epsilon_and_uniform_timesteps(tmp_path):
    from repa.objectives import validate as check_objective
    validate_objective(IDDPM)
    check_objective(tiny_train_config(tmp_path, model=_tiny_dit(), objective=IDDPM))
    with pytest.raises(ConfigError, match="model.prediction"):    # a velocity network with the iddpm objective
        check_objective(tiny_train_config(tmp_path, objective=IDDPM))
    with pytest.raises(ConfigError, match="model.prediction"):
        check_objective(tiny_train_config(tmp_path, model=_tiny_dit()))
    with pytest.raises(ConfigError, match="objective.time_sampling"):
        check_objective(tiny_train_config(tmp_path, model=_tiny_dit(),
                                          objective=dataclasses.replace(IDDPM, time_sampling="lognormal")))


def test_timesteps_from_uniform_time():
    t = torch.tensor([0.0, 0.0005, 0.001, 0.5, 0.9999999])
    assert timesteps_from_time(t).tolist() == [0, 0, 1, 500, 999]


def test_iddpm_repa_loss_combines_terms_and_reaches_projector_and_variance():
    model = _randomised(build_model(_tiny_dit()))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, noise = torch.tensor([0.0, 0.3, 0.6, 0.99]), torch.randn(4, 1, 8, 8)
    labels, tokens = torch.tensor([0, 1, 2, 3]), [torch.randn(4, 16, 16)]
    out = iddpm_repa_loss(model.forward_features, x0, labels, tokens, IDDPM, t=t, noise=noise)
    assert torch.isfinite(out.total) and torch.allclose(out.total, out.terms["denoise_loss"] + 0.5 * out.terms["align_loss"])
    out.total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["projectors.0.4.weight"].abs().sum() > 0
    C, p = 1, 2
    variance_rows = model.final_layer.linear.weight.grad.view(p * p, 2 * C, -1)[:, C:]
    assert variance_rows.abs().sum() > 0                           # the bound term trains the variance output
    # the trainer's entry point dispatches on objective.kind and gives the same numbers
    same = repa_loss(model.forward_features, x0, labels, tokens, IDDPM, t=t, noise=noise)
    direct = iddpm_repa_loss(model.forward_features, x0, labels, tokens, IDDPM, timesteps=torch.tensor([0, 300, 600, 990]),
                             noise=noise)
    assert torch.equal(same.total, out.total) and torch.equal(direct.total, out.total)
    vanilla = repa_loss(model.forward_features, x0, labels, None, dataclasses.replace(IDDPM, proj_coeff=0.0), t=t, noise=noise)
    assert torch.equal(vanilla.total, out.terms["denoise_loss"]) and vanilla.terms["align_loss"] == 0


def test_ten_step_iddpm_training_run_checkpoints_a_loadable_dit(tmp_path, tiny_dataset, teacher):
    cfg = tiny_train_config(tmp_path / "run", max_steps=10, log_every=5, ckpt_every=10,
                            model=_tiny_dit(hidden_size=32, num_heads=2), objective=IDDPM)
    result = train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["denoise_loss"], r["align_loss"]])).all() for r in records)
    loaded = repa.load_model(result.checkpoint)
    assert isinstance(loaded.model, DiT) and loaded.train_config.objective.kind == "iddpm" and loaded.step == 10
    x = repa.sample(loaded, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), sampler="ddpm", steps=5, cfg_scale=2.0,
                    generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
