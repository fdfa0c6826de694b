"""Checkpoints: the reference REPA format loads and reproduces outputs; broken files give clear errors."""
import argparse
import os

import pytest
import torch

import repa
from repa.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, load_model
from repa.models import build_model, model_config


def _random_model(**overrides):
    kwargs = dict(depth=3, hidden_size=128, num_heads=2, input_size=8, in_channels=4, num_classes=10,
                  encoder_depth=2, encoder_dims=(24,), projector_dim=64)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = build_model(model_config("SiT-S/2", **kwargs))
    with torch.no_grad():                      # leave the zero init so outputs are informative
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _reference_checkpoint(path, model, args):
    """Written the way the reference train.py saves (model/ema/opt/args/steps, args an argparse Namespace)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": opt.state_dict(),
                "args": args, "steps": 4000}, path)


def test_reference_checkpoint_loads_and_gives_same_outputs(tmp_path):
    model = _random_model()
    args = argparse.Namespace(model="SiT-S/2", encoder_depth=2, num_classes=10, resolution=64, cfg_prob=0.1,
                              projector_embed_dims="24", qk_norm=False, path_type="linear", fused_attn=True)
    path = tmp_path / "0004000.pt"
    _reference_checkpoint(path, model, args)
    loaded = repa.load_model(path)
    assert loaded.config.depth == 3 and loaded.config.encoder_depth == 2 and loaded.config.encoder_dims == (24,)
    assert loaded.step == 4000 and not loaded.model.training and loaded.train_config is None
    assert loaded.config is loaded.model.config and loaded.interpolant == "linear"
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        ref = model.forward_features(x, t, y, project=True)
        out = loaded.model.forward_features(x, t, y, project=True)
    assert torch.count_nonzero(ref.prediction) > 0
    assert torch.equal(ref.prediction, out.prediction) and torch.equal(ref.projected[0], out.projected[0])


def test_bare_state_dict_with_ddp_prefix_loads(tmp_path):
    model = _random_model(encoder_dims=())
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt")
    x, t, y = torch.randn(1, 4, 8, 8), torch.rand(1), torch.tensor([1])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded.model(x, t, y))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"ema": {}, "args": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "evil.pt")


def test_truncated_checkpoint_is_reported(tmp_path):
    model = _random_model()
    path = tmp_path / "ck.pt"
    torch.save({"ema": model.state_dict(), "steps": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


def test_not_a_checkpoint_is_reported(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a REPA/SiT checkpoint"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_atomic_save_writes_digest_and_detects_corruption(tmp_path):
    path = tmp_path / "ck" / "00000010.pt"
    atomic_torch_save({"x": torch.arange(1000)}, path)
    assert sorted(os.listdir(path.parent)) == ["00000010.pt", "00000010.pt.sha256"]
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(1000))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")
    path = tmp_path / "00000010.pt"
    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Unpicklable()}, path)
    assert os.listdir(tmp_path) == []
