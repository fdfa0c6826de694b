"""The core of the CPU suite on CUDA: model, objective, samplers, and a training run with checkpoint and resume.

Each test runs on the GPU and compares with the same computation on the CPU (float32 with TF32 off, so the
tolerances are float32 rounding), or, for the training loop, a resumed GPU run with uninterrupted ones on the same
GPU, bitwise. ``bench/gpu_check.py`` runs these with the other ``gpu`` tests.
"""
import copy
import dataclasses

import pytest
import torch

import repa
from repa.checkpoint import load_checkpoint
from repa.config import ObjectiveConfig
from repa.models import build_model, model_config
from repa.objectives import repa_loss
from tests.conftest import tiny_train_config

pytestmark = pytest.mark.gpu
RTOL = 1e-4                                     # relative to the output's scale: float32 rounding, other kernels


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model():
    torch.manual_seed(0)
    model = build_model(model_config("SiT-S/2", depth=4, hidden_size=128, num_heads=2, input_size=16,
                                     encoder_depth=2, encoder_dims=(32,), projector_dim=64))
    with torch.no_grad():                       # off the zero init, so every output depends on every layer
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _features(model, x, t, y, layers):
    """(prediction, projector outputs, {block: tokens}): the one place this file reads the model's named outputs."""
    out = model.forward_features(x, t, y, project=True, layers=layers)
    return out.prediction, out.projected, out.hidden


def _inputs(batch=8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 16, 16, generator=gen)
    t, y = torch.rand(batch, generator=gen), torch.randint(0, 1000, (batch,), generator=gen)
    return x, t, y, gen


def _close(gpu, cpu, rtol=RTOL):
    gpu, cpu = gpu.detach().float().cpu(), cpu.detach().float()
    assert torch.isfinite(gpu).all()
    err, scale = (gpu - cpu).abs().max().item(), cpu.abs().max().item()
    assert err <= rtol * scale, f"max difference {err:.3g} > {rtol} x scale {scale:.3g}"


def test_model_forward_on_cuda_matches_cpu(strict_fp32):
    model = _model().eval()
    x, t, y, _ = _inputs()
    with torch.no_grad():
        ref = _features(model, x, t, y, (1, 4))
        out = _features(copy.deepcopy(model).cuda(), x.cuda(), t.cuda(), y.cuda(), (1, 4))
    _close(out[0], ref[0])
    _close(out[1][0], ref[1][0])
    for layer in (1, 4):
        _close(out[2][layer], ref[2][layer])


def test_objective_and_gradients_on_cuda_match_cpu(strict_fp32):
    model = _model()
    x0, t, labels, gen = _inputs()
    noise, tokens = torch.randn(x0.shape, generator=gen), torch.randn(8, 64, 32, generator=gen)
    cfg = ObjectiveConfig(proj_coeff=0.5)
    results = []
    for device in ("cpu", "cuda"):
        net = copy.deepcopy(model).to(device)
        out = repa_loss(net.forward_features, x0.to(device), labels.to(device), [tokens.to(device)], cfg,
                        t=t.to(device), noise=noise.to(device))
        out.total.backward()
        results.append((out, {name: p.grad for name, p in net.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (gpu, gpu_grads) = results
    for term in ("total", "denoise", "align"):
        _close(getattr(gpu, term), getattr(ref, term))
    assert ref_grads.keys() == gpu_grads.keys() and len(ref_grads) > 0
    for name in ref_grads:
        _close(gpu_grads[name], ref_grads[name], rtol=1e-3)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_deterministic_samplers_on_cuda_match_cpu(strict_fp32, sampler):
    model = _model().eval()
    noise, _, labels, _ = _inputs(4)
    args = dict(sampler=sampler, steps=8, cfg_scale=1.8, guidance_interval=(0.0, 0.7))
    with torch.no_grad():
        ref = repa.sample(model, noise, labels, **args)
        out = repa.sample(copy.deepcopy(model).cuda(), noise.cuda(), labels.cuda(), **args)
    _close(out, ref, rtol=1e-3)


def test_sde_sampler_on_cuda_draws_each_samples_noise_from_its_own_generator(strict_fp32):
    """Sample i depends on seed i only: alone or in a batch of four, the same image (up to kernel rounding)."""
    model = _model().eval().cuda()
    noise, _, labels, _ = _inputs(4)
    noise, labels = noise.cuda(), labels.cuda()
    args = dict(sampler="sde", steps=10, cfg_scale=1.8, guidance_interval=(0.0, 0.7))

    def gens(seeds):
        return [torch.Generator("cuda").manual_seed(s) for s in seeds]

    with torch.no_grad():
        batch = repa.sample(model, noise, labels, generator=gens(range(4)), **args)
        again = repa.sample(model, noise, labels, generator=gens(range(4)), **args)
        alone = repa.sample(model, noise[2:3], labels[2:3], generator=gens([2]), **args)
        other = repa.sample(model, noise, labels, generator=gens(range(10, 14)), **args)
    assert torch.equal(batch, again)
    _close(alone, batch[2:3], rtol=1e-3)
    assert (other - batch).abs().max() > 1e-2 * batch.abs().max()     # the generators do drive the noise


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_resume_is_bitwise_on_the_same_gpu(tmp_path, tiny_dataset, teacher, precision):
    """Two uninterrupted CUDA runs agree bitwise (deterministic kernels), and so does a run stopped and resumed."""
    from repa.training import train
    cfg = dataclasses.replace(tiny_train_config(tmp_path / "a", max_steps=12, ckpt_every=4, log_every=2),
                              precision=precision)
    teacher = teacher.to("cuda")
    runs = {}
    for name in ("a", "b", "resumed"):
        run_cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / name))
        if name == "resumed":
            train(run_cfg, dataset=tiny_dataset, encoders=[teacher], device="cuda", progress=False, stop_at_step=6)
        result = train(run_cfg, dataset=tiny_dataset, encoders=[teacher], device="cuda", progress=False)
        assert result.step == 12
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "00000012.pt")
    assert runs["resumed"]["steps"] == 12
    for other, why in (("b", "two uninterrupted runs differ: a CUDA kernel is not deterministic"),
                       ("resumed", "the resumed run differs from the uninterrupted one")):
        for key in ("model", "ema"):
            differ = [n for n, w in runs["a"][key].items() if not torch.equal(w, runs[other][key][n])]
            assert not differ, f"{why} ({key}: {differ[:3]}...)"
