"""REPA-E: the end-to-end objective (stop-gradient, VAE regulariser, discriminator), exact resume, the exported
E2E-VAE and a latent model trained on its latents."""
import dataclasses

import numpy as np
import pytest
import torch

import repa
from repa.checkpoint import load_checkpoint
from repa.config import ConfigError
from repa.e2e_config import EndToEndConfig
from repa.objectives import StepContext, get_objective, step_generator, validate
from repa.training import train
from tests.conftest import PatchTeacher, tiny_model_config, tiny_train_config


def rgb_images():
    """32 RGB 16x16 images in 3 classes (class = which quadrant is bright)."""
    from repa.data.memory import ArrayDataset
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 32)
    images = (rng.random((32, 3, 16, 16)) * 60).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        images[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 180
    return ArrayDataset(images, labels, num_classes=3)


@pytest.fixture
def rgb_dataset():
    return rgb_images()


@pytest.fixture
def rgb_teacher():
    return PatchTeacher(grid=4, dim=16, channels=3)


def e2e_config(run_dir, vae_dir, **e2e):
    e = EndToEndConfig(vae=str(vae_dir), perceptual="none", disc_layers=1, disc_channels=8, **e2e)
    cfg = tiny_train_config(run_dir, model=tiny_model_config(space="latent", in_channels=4, input_size=8),
                            objective=dataclasses.replace(tiny_train_config(run_dir).objective, kind="repa-e"),
                            e2e=e, max_steps=6, ckpt_every=2, log_every=1)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=16))


def test_defaults_are_repa_e():
    e = EndToEndConfig()
    assert (e.vae_lr, e.disc_lr, e.vae_align_proj_coeff, e.bn_momentum) == (1e-4, 1e-4, 1.5, 0.1)
    assert (e.reconstruction_weight, e.perceptual, e.perceptual_weight, e.kl_weight) == (1.0, "lpips-vgg", 1.0, 1e-6)
    assert (e.disc_weight, e.disc_factor, e.disc_start, e.disc_layers, e.disc_channels) == (0.1, 1.0, 0, 3, 64)


def test_config_errors_name_the_field(tmp_path, tiny_vae_dir):
    cfg = e2e_config(tmp_path / "r", tiny_vae_dir)
    validate(cfg)
    for change, field in [(dict(e2e=dataclasses.replace(cfg.e2e, perceptual="lpips-vgg")), "e2e.perceptual_weights"),
                          (dict(e2e=dataclasses.replace(cfg.e2e, vae_lr=0.0)), "e2e.vae_lr"),
                          (dict(encoders=()), "encoders"), (dict(sample_every=5), "sample_every"),
                          (dict(parallel="fsdp"), "parallel"),
                          (dict(model=dataclasses.replace(cfg.model, name=cfg.model.name.replace("SiT", "MMDiT"),
                                                          num_classes=0)), "model.name: REPA-E tunes")]:
        with pytest.raises(ConfigError, match=field):
            validate(dataclasses.replace(cfg, **change))


def _context(cfg, state, net, dataset, teacher, step=0):
    from repa.data.loader import BatchLoader
    from repa.models import FeaturesView
    from repa.teachers import Teachers
    objective = get_objective("repa-e")
    teachers = Teachers.load(cfg, objective.teacher_needs(cfg), dataset, [teacher], torch.device("cpu"))
    batch = next(iter(BatchLoader(dataset, cfg.global_batch_size, seed=0, keys=["image", "label"])))
    return StepContext(cfg, step, batch, slice(0, cfg.global_batch_size), torch.device("cpu"), teachers,
                       FeaturesView(net), FeaturesView(net), state)


def _vae_moves(cfg, dataset, teacher):
    """(gradient norm of the VAE's update, whether its weights changed, whether the SiT got any .grad) after one
    ``tune_vae`` of the real objective."""
    from repa.e2e import EndToEndState
    from repa.models import build_model
    torch.manual_seed(0)
    net = build_model(cfg.model)
    state = EndToEndState(cfg, "cpu")
    before = [p.detach().clone() for p in state.vae.parameters()]
    inputs = get_objective("repa-e").inputs(_context(cfg, state, net, dataset, teacher))
    changed = any(not torch.equal(a, p) for a, p in zip(before, state.vae.parameters()))
    return float(inputs["vae_terms"]["vae_grad_norm"]), changed, any(p.grad is not None for p in net.parameters())


def test_stop_gradient_alignment_and_regulariser_reach_the_vae_diffusion_does_not(tmp_path, tiny_vae_dir,
                                                                                   rgb_dataset, rgb_teacher):
    silent = dict(reconstruction_weight=0.0, kl_weight=0.0, disc_weight=0.0)
    # alignment alone: the VAE gets a gradient through the (untouched) transformer
    norm, changed, sit_grad = _vae_moves(e2e_config(tmp_path, tiny_vae_dir, vae_align_proj_coeff=1.5, **silent),
                                         rgb_dataset, rgb_teacher)
    assert norm > 0 and changed and not sit_grad
    # neither alignment nor regulariser: nothing reaches the VAE (zero gradient, AdamW leaves it as it is)
    norm, changed, _ = _vae_moves(e2e_config(tmp_path, tiny_vae_dir, vae_align_proj_coeff=0.0, **silent),
                                  rgb_dataset, rgb_teacher)
    assert norm == 0 and not changed
    # the regulariser alone (L1 + KL + GAN)
    norm, changed, _ = _vae_moves(e2e_config(tmp_path, tiny_vae_dir, vae_align_proj_coeff=0.0), rgb_dataset,
                                  rgb_teacher)
    assert norm > 0 and changed
    # the diffusion term: its input carries no graph back to the VAE, and its backward leaves the VAE without .grad
    from repa.e2e import EndToEndState
    from repa.models import FeaturesView, build_model
    cfg = e2e_config(tmp_path, tiny_vae_dir)
    net, state = build_model(cfg.model), EndToEndState(cfg, "cpu")
    inputs = get_objective("repa-e").inputs(_context(cfg, state, net, rgb_dataset, rgb_teacher))
    assert not inputs["x0"].requires_grad
    out = get_objective("repa-e").loss(FeaturesView(net), dict(inputs, proj_coeff=0.0), cfg.objective)
    out.total.backward()
    assert all(p.grad is None for p in state.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert {"vae_l1", "vae_kl", "vae_gan", "vae_align_loss", "disc_loss", "denoise_loss"} <= set(out.terms)


def test_vae_pass_stops_after_the_aligned_block_with_the_full_passs_gradient(tmp_path, tiny_vae_dir):
    """REPA-E's VAE pass runs blocks 1..encoder_depth only: the projector outputs and the gradient they send back
    to the latents equal the whole network's to the bit, the prediction is skipped, and a depth outside the network
    is refused."""
    from repa.models import build_model
    from repa.models.sit import ModelOutput
    cfg = e2e_config(tmp_path, tiny_vae_dir)
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(cfg.model, depth=4, encoder_depth=2)).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 1, 2])
    visited = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: visited.append(i)) for i, b in enumerate(net.blocks, 1)]
    grads, outs = [], []
    for stop in (None, 2):
        visited.clear()
        xx = x.clone().requires_grad_()
        out: ModelOutput = net.forward_features(xx, t, y, project=True, stop_after=stop)
        sum(p.square().sum() for p in out.projected).backward()
        grads.append(xx.grad)
        outs.append(out)
        assert visited == ([1, 2, 3, 4] if stop is None else [1, 2])
    for h in hooks:
        h.remove()
    assert outs[0].prediction is not None and outs[1].prediction is None
    assert all(torch.equal(a, b) for a, b in zip(outs[0].projected, outs[1].projected))
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])
    for bad in (0, 5):
        with pytest.raises(ValueError, match="stop_after"):
            net.forward_features(x, t, y, stop_after=bad)
    with pytest.raises(ValueError, match="stop_after 2"):
        net.forward_features(x, t, y, layers=(3,), stop_after=2)


def test_latent_norm_is_batch_statistics_for_the_transformer(tmp_path, tiny_vae_dir, rgb_dataset, rgb_teacher):
    from repa.e2e import EndToEndState
    from repa.models import build_model
    cfg = e2e_config(tmp_path, tiny_vae_dir)
    state = EndToEndState(cfg, "cpu")
    assert torch.allclose(state.norm.running_var, torch.full((4,), 0.18215 ** -2))    # the VAE's scaling factor
    x0 = get_objective("repa-e").inputs(_context(cfg, state, build_model(cfg.model), rgb_dataset, rgb_teacher))["x0"]
    assert torch.allclose(x0.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(x0.var((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    assert not torch.allclose(state.norm.running_var, torch.full((4,), 0.18215 ** -2))   # momentum 0.1 update
    assert state.norm.affine is False and not list(state.norm.parameters())


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_trains_resumes_bitwise_exports_its_vae_and_a_latent_model_trains_on_it(tmp_path, tiny_vae_dir,
                                                                                 rgb_dataset, rgb_teacher):
    from repa.autoencoder import LATENT_SCALE, encode_moments, load_vae
    from repa.data.memory import ArrayDataset
    kw = dict(dataset=rgb_dataset, encoders=[rgb_teacher], progress=False)
    full = train(e2e_config(tmp_path / "full", tiny_vae_dir), **kw)
    cfg = e2e_config(tmp_path / "run", tiny_vae_dir)
    train(cfg, stop_at_step=3, **kw)                                     # killed after step 3: its checkpoint lost
    (tmp_path / "run" / "checkpoints" / "00000003.pt").unlink()
    resumed = train(cfg, **kw)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("model", "ema", "opt", "objective_state"):
        _same(a[key], b[key], key)
    assert set(a["objective_state"]) >= {"vae", "discriminator", "latent_norm", "latent_norm_ema", "opt_vae",
                                         "opt_disc"}
    start = load_vae(tiny_vae_dir).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in a["objective_state"]["vae"].items())   # the VAE was tuned

    out = repa.export_model(full.checkpoint, tmp_path / "export")
    vae = load_vae(out / "vae")                                          # what `repa prepare --vae DIR` loads
    images = torch.as_tensor(rgb_dataset.get_batch(np.arange(8))["image"])
    # its latents at the fixed scale are the transformer's normalised latents (EMA statistics)
    tuned = load_vae(tiny_vae_dir)
    tuned.load_state_dict(a["objective_state"]["vae"])
    stats = a["objective_state"]["latent_norm_ema"]
    raw, _ = encode_moments(tuned, images)
    folded, _ = encode_moments(vae, images)
    expected = (raw - stats["mean"].view(1, 4, 1, 1)) / (stats["var"].view(1, 4, 1, 1) + 1e-4).sqrt()
    assert torch.allclose(folded * LATENT_SCALE, expected, atol=1e-4)
    assert torch.allclose(vae.decode(folded).sample, tuned.decode(raw).sample, atol=1e-4)

    mean, std = encode_moments(vae, torch.as_tensor(rgb_dataset.get_batch(np.arange(32))["image"]))
    latents = ArrayDataset(rgb_dataset.get_batch(np.arange(32))["image"], rgb_dataset.labels, num_classes=3,
                           latent_mean=mean.numpy(), latent_std=std.numpy())
    ldm = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind="interpolant"),
                              run_dir=str(tmp_path / "ldm"), max_steps=3, ckpt_every=3)
    result = train(ldm, dataset=latents, encoders=[rgb_teacher], progress=False)
    assert result.step == 3 and np.isfinite(result.metrics["loss"])
    assert "objective_state" not in load_checkpoint(result.checkpoint)


def test_presets_are_repa_runs_with_the_vae_tuned_end_to_end(capsys):
    import json
    from repa.cli import main
    from repa.presets import get_preset
    for size in ("B", "XL"):
        e2e, base = get_preset(f"SiT-{size}/2-REPA-E-256"), get_preset(f"SiT-{size}/2-REPA-256")
        assert e2e.objective.kind == "repa-e" and e2e.e2e == EndToEndConfig()
        assert dataclasses.replace(e2e, objective=base.objective, run_dir=base.run_dir) == base
    argv = ["train", "--preset", "SiT-XL/2-REPA-E-256", "--e2e.perceptual-weights", "vgg16.pth", "lin.pth",
            "--e2e.vae-lr", "2e-5", "--dry-run"]
    assert main(argv) == 0
    e = json.loads(capsys.readouterr().out)["e2e"]
    assert e["perceptual_weights"] == ["vgg16.pth", "lin.pth"] and e["vae_lr"] == 2e-5
    assert main(argv[:3] + ["--dry-run"]) == 2                  # LPIPS without its weights: a one-line error
    assert "e2e.perceptual_weights" in capsys.readouterr().err


def test_lpips_loads_torchvision_and_lpips_layouts_and_measures_distance(tmp_path):
    from repa.vae_losses import LPIPS, load_perceptual
    torch.manual_seed(0)
    ref = LPIPS()
    vgg = {k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
    torch.save({**vgg, "classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "vgg16.pth")   # classifier ignored
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
               tmp_path / "lin.pth")
    e = EndToEndConfig(perceptual_weights=(str(tmp_path / "vgg16.pth"), str(tmp_path / "lin.pth")))
    net = load_perceptual(e, "cpu")
    assert torch.equal(net.features[0].weight, ref.features[0].weight) and not net.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(net(x, x), torch.zeros(2))
    d = net(x, y)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    assert load_perceptual(dataclasses.replace(e, perceptual="none"), "cpu") is None
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1)}, tmp_path / "short.pth")
    with pytest.raises(ConfigError, match="lack"):
        load_perceptual(dataclasses.replace(e, perceptual_weights=(e.perceptual_weights[0],
                                                                    str(tmp_path / "short.pth"))), "cpu")


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, tiny_vae_dir):
    """The VAE's gradients are averaged over ranks and the latent BatchNorm uses the global batch's statistics:
    2 gloo processes (each with 2 micro-batches) train what one process trains."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    states = []
    for nproc, accum in ((1, 1), (2, 2)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(root / "tests" / "dist_worker_repae.py"), str(tmp_path / str(nproc)), str(tiny_vae_dir), str(accum)]
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        states.append(load_checkpoint(tmp_path / str(nproc) / "checkpoints" / "00000003.pt"))
    one, two = states
    for key in ("model", "ema"):
        for name, value in one[key].items():
            assert torch.allclose(value, two[key][name], atol=1e-5, rtol=0), f"{key}.{name}"
    for part in ("vae", "latent_norm"):
        for name, value in one["objective_state"][part].items():
            assert torch.allclose(value.float(), two["objective_state"][part][name].float(), atol=1e-5), name
