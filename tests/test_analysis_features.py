"""Feature extraction: the model contract, noise that depends only on the sample, and clear errors."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from repa.analysis import extract_features
from repa.analysis.features import encoder_features, sample_noise
from repa.models import ModelOutput, build_model, model_config
from repa.paths import get_path


def tiny_sit():
    torch.manual_seed(0)
    cfg = model_config("SiT-S/2", depth=4, hidden_size=64, num_heads=4, input_size=8, in_channels=4,
                       num_classes=10, encoder_dims=(32,), encoder_depth=2)
    model = build_model(cfg).eval()
    for p in model.parameters():       # the zero-initialised adaLN gates would make every block the identity
        nn.init.normal_(p, std=0.05)
    return model


class EchoModel(nn.Module):
    """Follows the contract; block k returns k * x_t as (B, N, C) tokens so the inputs can be checked."""

    def __init__(self, depth=3):
        super().__init__()
        self.config = SimpleNamespace(depth=depth, name="echo")
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t, y):
        return self.forward_features(x, t, y).prediction

    def forward_features(self, x, t, y, project=False, layers=()):
        tokens = x.flatten(2).transpose(1, 2) * self.scale          # (B, H*W, C)
        return ModelOutput(x, [tokens[..., :2]] if project else [], {k: k * tokens for k in layers})


def fake_encoder(images):
    """uint8 (B, 3, 8, 8) -> (B, 16, 12): 2x2 patches flattened, as a frozen encoder would give tokens."""
    x = images.float() / 255
    return x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], 16, 12)


def batches(n=10, batch_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 8, 8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return [{"x0": x0[i:i + batch_size], "label": labels[i:i + batch_size], "image": images[i:i + batch_size]}
            for i in range(0, n, batch_size)]


def test_shapes_and_pooling_on_the_real_model():
    model = tiny_sit()
    fs = extract_features(model, batches(), t=0.5, encoders=[fake_encoder], keep_tokens=True)
    assert fs.layers == (1, 2, 3, 4) and fs.num_samples == 10
    for layer in fs.layers:
        assert fs.tokens[layer].shape == (10, 16, 64)
        torch.testing.assert_close(fs.pooled[layer], fs.tokens[layer].mean(dim=1))
    assert len(fs.projected_pooled) == 1 and fs.projected_pooled[0].shape == (10, 32)
    assert fs.encoder_pooled[0].shape == (10, 12) and fs.encoder_tokens[0].shape == (10, 16, 12)
    assert not torch.equal(fs.pooled[1], fs.pooled[4])
    pooled, _ = encoder_features(fake_encoder, batches())
    assert torch.equal(pooled, fs.encoder_pooled[0])


def test_results_do_not_depend_on_batch_size():
    model = tiny_sit()
    a = extract_features(model, batches(batch_size=3), t=0.3, layers=(2, 4))
    b = extract_features(model, batches(batch_size=10), t=0.3, layers=(4, 2))
    assert a.layers == b.layers == (2, 4)
    for layer in a.layers:
        torch.testing.assert_close(a.pooled[layer], b.pooled[layer], rtol=1e-5, atol=1e-6)
    c = extract_features(model, batches(batch_size=3), t=0.3, layers=(2,), seed=1)
    assert not torch.allclose(a.pooled[2], c.pooled[2])


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_inputs_are_noised_on_the_path_with_fixed_noise(path):
    model = EchoModel().train()
    data = batches(n=6, batch_size=4)
    fs = extract_features(model, data, t=0.25, path=path, layers=(1, 3), seed=7, keep_tokens=True)
    assert model.training                      # restored after extraction
    x0 = torch.cat([b["x0"] for b in data])
    x_t = get_path(path).interpolate(x0, sample_noise(x0.shape, 0, 7), torch.full((6,), 0.25))
    torch.testing.assert_close(fs.tokens[3], 3 * x_t.flatten(2).transpose(1, 2))
    assert fs.projected_pooled[0].shape == (6, 2)
    assert torch.equal(fs.labels, torch.cat([b["label"] for b in data]))
    clean = extract_features(model, data, t=0.0, layers=(1,), keep_tokens=True)
    torch.testing.assert_close(clean.tokens[1], x0.flatten(2).transpose(1, 2))


def test_noise_rows_depend_only_on_position():
    whole = sample_noise((5, 2, 3), 0, seed=3)
    torch.testing.assert_close(torch.cat([sample_noise((2, 2, 3), 0, 3), sample_noise((3, 2, 3), 2, 3)]), whole)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval(t):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        extract_features(tiny_sit(), batches(), t=t)


@pytest.mark.parametrize("layers", [(5,), (0, 1), ()])
def test_missing_layer(layers):
    with pytest.raises(ValueError, match="1-based|at least one"):
        extract_features(tiny_sit(), batches(), t=0.5, layers=layers)


def test_bad_batches():
    with pytest.raises(ValueError, match="missing"):
        extract_features(tiny_sit(), [{"x0": torch.zeros(2, 4, 8, 8)}], t=0.5)
    with pytest.raises(ValueError, match="'image'"):
        extract_features(tiny_sit(), [{"x0": torch.zeros(2, 4, 8, 8), "label": torch.zeros(2)}], t=0.5,
                         encoders=[fake_encoder])
    with pytest.raises(ValueError, match="no samples"):
        extract_features(tiny_sit(), [], t=0.5)
