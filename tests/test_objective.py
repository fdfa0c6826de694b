"""The REPA objective: paths, time sampling, denoising and alignment losses, where gradients flow."""
import math

import numpy as np
import pytest
import torch

from repa.config import ObjectiveConfig
from repa.conditions import ClassLabels
from repa.losses import alignment_loss, denoising_loss
from repa.objectives import repa_loss, sample_time
from repa.models import build_model
from repa.paths import get_path
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_path_velocity_is_time_derivative_and_score_is_exact(name):
    path = get_path(name)
    x0, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    h = 1e-6
    numeric = (path.interpolate(x0, noise, t + h) - path.interpolate(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(path.velocity(x0, noise, t), numeric, atol=1e-6)
    # For x0 = 0 exactly, x_t = sigma e and the score of N(0, sigma^2) at x_t is -e / sigma.
    zero = torch.zeros_like(x0)
    x_t = path.interpolate(zero, noise, t)
    v = path.velocity(zero, noise, t)
    sigma = path.sigma(t)[:, None]
    assert torch.allclose(path.score_from_velocity(v, x_t, t), -noise / sigma, atol=1e-8)


def test_linear_path_endpoints_and_target():
    path = get_path("linear")
    x0, e = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(path.interpolate(x0, e, torch.zeros(2)), x0)
    assert torch.equal(path.interpolate(x0, e, torch.ones(2)), e)
    assert torch.allclose(path.velocity(x0, e, torch.rand(2)), e - x0)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_lognormal_time_sampling_matches_its_definition(path):
    cfg = ObjectiveConfig(path=path, time_sampling="lognormal")
    t = sample_time(20000, cfg, generator=torch.Generator().manual_seed(0))
    ratio = torch.exp(torch.randn(20000, generator=torch.Generator().manual_seed(0)))
    expected = ratio / (1 + ratio) if path == "linear" else 2 / math.pi * torch.atan(ratio)
    assert torch.allclose(t, expected)
    assert 0.45 < t.median() < 0.55 and t.min() > 0 and t.max() < 1
    uniform = sample_time(20000, ObjectiveConfig(), generator=torch.Generator().manual_seed(1))
    assert abs(uniform.mean() - 0.5) < 0.01


def test_alignment_loss_is_minus_one_for_identical_tokens():
    z = torch.randn(2, 16, 8)
    assert torch.allclose(alignment_loss([z], [z * 3.0]), torch.full((2,), -1.0), atol=1e-6)
    assert torch.allclose(alignment_loss([z], [-z]), torch.full((2,), 1.0), atol=1e-6)


def test_alignment_loss_equals_naive_token_loop_and_averages_encoders():
    gen = torch.Generator().manual_seed(0)
    zs = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 6, generator=gen)]
    ys = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 6, generator=gen)]
    naive = np.zeros(3)
    for z, y in zip(zs, ys):
        for b in range(3):
            total = 0.0
            for n in range(5):
                a, c = z[b, n].double().numpy(), y[b, n].double().numpy()
                total += -a @ c / (np.linalg.norm(a) * np.linalg.norm(c))
            naive[b] += total / 5 / len(zs)
    assert np.allclose(alignment_loss(zs, ys).numpy(), naive, atol=1e-6)


def test_alignment_loss_runs_in_float32_under_autocast():
    z = torch.randn(2, 4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = alignment_loss([z], [z.float()])
    assert loss.dtype == torch.float32 and torch.allclose(loss, torch.full((2,), -1.0), atol=1e-6)


def test_alignment_loss_rejects_mismatched_token_counts():
    with pytest.raises(ValueError, match="token grid"):
        alignment_loss([torch.randn(2, 16, 8)], [torch.randn(2, 64, 8)])


def test_denoising_loss_is_per_sample_mean():
    pred, target = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert torch.equal(denoising_loss(pred, target), torch.tensor([1.0, 4.0]))


def test_class_label_dropout_uses_the_null_class():
    labels = torch.tensor([0, 1, 2, 0])
    out = ClassLabels(3, dropout=0.1).drop(labels, torch.tensor([0.05, 0.5, 0.09, 0.11]))
    assert out.tolist() == [3, 1, 3, 0]


def test_alignment_gradient_reaches_only_blocks_up_to_k_and_projector():
    model = build_model(tiny_model_config(depth=4, encoder_depth=2))
    # break adaLN-Zero so that every block actually passes gradient
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x0 = torch.randn(2, 1, 8, 8)
    tokens = [torch.randn(2, 16, 16)]
    cfg = ObjectiveConfig(proj_coeff=1.0)
    out = model.forward_features(get_path("linear").interpolate(x0, torch.randn_like(x0), torch.rand(2)),
                                 torch.rand(2), torch.tensor([0, 1]), project=True)
    alignment_loss(out.projected, tokens).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for i in range(4):
        reached = grads[f"blocks.{i}.attn.qkv.weight"] is not None and grads[f"blocks.{i}.attn.qkv.weight"].abs().sum() > 0
        assert reached == (i < 2), f"block {i + 1}"
    assert grads["projectors.0.4.weight"].abs().sum() > 0
    assert grads["final_layer.linear.weight"] is None


def test_repa_loss_total_combines_terms_with_lambda():
    model = build_model(tiny_model_config())
    x0 = torch.randn(4, 1, 8, 8)
    t, noise = torch.rand(4), torch.randn(4, 1, 8, 8)
    tokens = [torch.randn(4, 16, 16)]
    out = repa_loss(model.forward_features, x0, torch.tensor([0, 1, 2, 0]), tokens, ObjectiveConfig(proj_coeff=0.5),
                    t=t, noise=noise)
    assert torch.allclose(out.total, out.terms["denoise_loss"] + 0.5 * out.terms["align_loss"])
    vanilla = repa_loss(model.forward_features, x0, torch.tensor([0, 1, 2, 0]), None, ObjectiveConfig(proj_coeff=0.0),
                        t=t, noise=noise)
    assert torch.equal(vanilla.total, out.terms["denoise_loss"]) and vanilla.terms["align_loss"] == 0
