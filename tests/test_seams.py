"""The seams of issue "one path for each thing": a new objective trains and resumes without touching the loop,
an unconditional model is a first-class option, and every in-process entry point generates the same images."""
import dataclasses
import json
import types

import numpy as np
import pytest
import torch

import repa
from repa.checkpoint import load_checkpoint
from repa.cli import main
from repa.losses import LossOutput, denoising_loss
from repa.objectives import OBJECTIVES, Objective, clean_inputs, condition_inputs
from repa.paths import get_path
from repa.training import train
from tests.conftest import tiny_model_config, tiny_train_config


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a, b):
    for key in ("model", "ema", "opt"):
        flat_a, flat_b = a[key], b[key]
        if key == "opt":
            flat_a = {f"{i}.{k}": v for i, s in flat_a["state"].items() for k, v in s.items()}
            flat_b = {f"{i}.{k}": v for i, s in flat_b["state"].items() for k, v in s.items()}
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(torch.as_tensor(flat_a[name]), torch.as_tensor(flat_b[name])), f"{key}.{name}"


# ---- a new objective is a registry entry ---------------------------------------------------------------------------

class EndpointObjective(Objective):
    """A toy objective written here, not in repa: velocity matching at times drawn from a triangular distribution on a
    stream of its own, with its own named term (the mean |x_t|) that the loop must log without knowing it."""
    name, prediction = "toy-endpoint", "velocity"

    def inputs(self, ctx):
        x0 = clean_inputs(ctx)
        gen = ctx.generator("toy")
        u = torch.rand(ctx.cfg.global_batch_size, 2, generator=gen, device=ctx.device)[ctx.rows]
        t = u.mean(dim=1)                                  # a triangular bell on [0, 1] from two uniforms
        return dict(x0=x0, cond=condition_inputs(ctx), t=t, noise=ctx.normal(gen, *x0.shape[1:]))

    def loss(self, features, inputs, cfg):
        path = get_path("linear")
        x_t = path.interpolate(inputs["x0"], inputs["noise"], inputs["t"])
        out = features(x_t, inputs["t"], inputs["cond"])
        denoise = denoising_loss(out.prediction, path.velocity(inputs["x0"], inputs["noise"], inputs["t"])).mean()
        return LossOutput(denoise, {"denoise_loss": denoise.detach(), "toy_abs_xt": x_t.abs().mean().detach()})


@pytest.fixture
def toy_objective():
    OBJECTIVES[EndpointObjective.name] = EndpointObjective()
    yield OBJECTIVES[EndpointObjective.name]
    del OBJECTIVES[EndpointObjective.name]


def _toy_config(run_dir):
    cfg = tiny_train_config(run_dir, encoders=(), max_steps=3, log_every=1, ckpt_every=3,
                            model=tiny_model_config(encoder_dims=()))
    return dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind=EndpointObjective.name,
                                                                  proj_coeff=0.0))


def test_a_toy_objective_registered_in_a_test_trains_and_resumes_bitwise(tmp_path, tiny_dataset, toy_objective):
    full = _toy_config(tmp_path / "full")
    train(full, dataset=tiny_dataset, progress=False)
    records = _records(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["toy_abs_xt"] > 0 and r["loss"] == r["denoise_loss"] for r in records)   # its own term is logged
    resumed = _toy_config(tmp_path / "resumed")
    train(resumed, dataset=tiny_dataset, progress=False, stop_at_step=1)          # "killed" after step 1
    train(resumed, dataset=tiny_dataset, progress=False)
    _assert_same_weights(load_checkpoint(tmp_path / "full/checkpoints/00000003.pt"),
                         load_checkpoint(tmp_path / "resumed/checkpoints/00000003.pt"))
    assert _records(tmp_path / "resumed") == records or \
        [{k: v for k, v in r.items() if "per_s" not in k} for r in _records(tmp_path / "resumed")] == \
        [{k: v for k, v in r.items() if "per_s" not in k} for r in records]


def test_an_unregistered_objective_is_refused_by_name(tmp_path, tiny_dataset):
    cfg = _toy_config(tmp_path / "run")
    with pytest.raises(repa.config.ConfigError, match="objective.kind: unknown 'toy-endpoint'"):
        train(cfg, dataset=tiny_dataset, progress=False)
    assert not (tmp_path / "run").exists()


# ---- an unconditional model ------------------------------------------------------------------------------------------

def _unconditional_config(run_dir, **overrides):
    return tiny_train_config(run_dir, max_steps=4, ckpt_every=2, log_every=2,
                             model=tiny_model_config(num_classes=0, class_dropout=0.0), **overrides)


def test_an_unconditional_model_has_no_label_input():
    net = repa.build_model(tiny_model_config(num_classes=0, class_dropout=0.0))
    assert not any("y_embedder" in k for k in net.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert net(x, t, None).shape == x.shape
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.tensor([0, 1]))
    with pytest.raises(repa.config.ConfigError, match="model.class_dropout"):
        tiny_model_config(num_classes=0, class_dropout=0.1)


def test_an_unconditional_model_trains_resumes_and_samples(tmp_path, tiny_dataset, teacher, capsys):
    full = train(_unconditional_config(tmp_path / "full"), dataset=tiny_dataset, encoders=[teacher], progress=False)
    cfg = _unconditional_config(tmp_path / "resumed")
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False, stop_at_step=2)
    train(cfg, dataset=tiny_dataset, encoders=[teacher], progress=False)
    _assert_same_weights(load_checkpoint(full.checkpoint), load_checkpoint(tmp_path / "resumed/checkpoints/00000004.pt"))
    assert _records(tmp_path / "full")[-1]["align_loss"] != 0

    loaded = repa.load_model(full.checkpoint)
    assert loaded.config.num_classes == 0
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = repa.sample(loaded, noise, None, sampler="euler", steps=4)
    assert x.shape == noise.shape and torch.isfinite(x).all() and not torch.equal(x, noise)
    from repa.evaluation import sample_to_npz
    out = sample_to_npz(str(full.checkpoint), str(tmp_path / "samples"), num=5, steps=3,
                                        sampler="euler", batch_size=2, progress=False)
    with np.load(out) as data:
        assert data["arr_0"].shape == (5, 8, 8, 3)
        np.testing.assert_array_equal(data["arr_0"][:, :, :, 0],
                                      repa.generate_images(loaded, 5, sampler="euler", steps=3)[:, 0])

    # analysis reads its hidden tokens without labels
    from repa.analysis.features import extract_features
    feats = extract_features(loaded.model, [{"x0": torch.randn(4, 1, 8, 8), "label": torch.zeros(4, dtype=torch.long)}],
                             t=0.5, layers=(1, 2))
    assert feats.pooled[2].shape == (4, 32) and torch.isfinite(feats.pooled[2]).all()

    # guidance needs a null condition: refused in one line, nothing written
    code = main(["sample", str(full.checkpoint), "--num", "2", "--out", str(tmp_path / "guided"), "--cfg-scale", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unconditional" in err and "Traceback" not in err
    assert not (tmp_path / "guided").exists()
    with pytest.raises(repa.config.ConfigError, match="unconditional"):
        repa.sample(loaded, noise, None, steps=4, cfg_scale=1.5)


# ---- one in-process generator --------------------------------------------------------------------------------------

def test_previews_the_demo_and_repa_sample_generate_the_same_images(tmp_path, tiny_vae_dir):
    """One tiny latent model, the same seed: a training preview, the default job's generator and `repa sample`
    give identical images (they are one generator). All decode the 16 latents as one batch: the VAE's convolutions
    are not bit-identical across batch sizes (one uint8 step in about 1e-4 of the pixels)."""
    from repa.autoencoder import decode, load_vae
    from repa.demo.config import DemoConfig
    from repa.demo.pipeline import SAMPLE_SEED, generate
    from repa.evaluation import sample_to_npz
    from repa.training_utils import sample_preview
    from tests.test_generate import _checkpoint, _tiny_model
    from PIL import Image

    model = _tiny_model(in_channels=4, input_size=8, space="latent", class_dropout=0.1)
    ckpt = _checkpoint(tmp_path / "m.pt", model)

    def npz(seed, sampler, steps, cfg_scale=1.0):
        out = sample_to_npz(ckpt, str(tmp_path / f"s{seed}-{sampler}"), num=16, seed=seed, sampler=sampler,
                            steps=steps, cfg_scale=cfg_scale, labels="balanced", batch_size=16, vae=str(tiny_vae_dir),
                            progress=False)
        with np.load(out) as data:
            return data["arr_0"]

    # the training preview: 16 EMA samples, seed cfg.seed, the default sampler with cfg.sample_steps steps
    cfg = tiny_train_config(tmp_path / "run", seed=3, sample_steps=4, sample_vae=str(tiny_vae_dir), model=model.config)
    sample_preview(model, cfg, step=7)
    preview = np.asarray(Image.open(tmp_path / "run" / "samples" / "00000007.png"))
    from repa.visualize import image_grid
    assert np.array_equal(preview, image_grid(npz(3, "sde", 4).transpose(0, 3, 1, 2)))

    # the default job's generator: seed SAMPLE_SEED, its sampler, steps and guidance, decoded by the job's VAE
    demo = DemoConfig(sampler="heun", sample_steps=3)
    kl = load_vae(str(tiny_vae_dir))
    job = generate(repa.load_model(ckpt), types.SimpleNamespace(decode=lambda z: decode(kl, z)), 16, demo, 1.5)
    assert np.array_equal(job.transpose(0, 2, 3, 1), npz(SAMPLE_SEED, "heun", 3, cfg_scale=1.5))
