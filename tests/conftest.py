"""Shared test helpers: tiny configs, an in-memory dataset, a frozen test-double encoder."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(min(2, os.cpu_count() or 1))


class PatchTeacher(torch.nn.Module):
    """A frozen stand-in teacher for core tests: mean-pooled image patches through a fixed random projection.

    It honours the encoder contract (uint8 (B, C, H, W) -> float (B, grid**2, E)); the real encoders have their
    own tests in test_encoders.py.
    """

    def __init__(self, grid: int, dim: int, channels: int = 1, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.grid, self.embed_dim, self.token_grid, self.name = grid, dim, grid, "patch-teacher"
        self.register_buffer("weight", torch.randn(channels * 4, dim, generator=gen))
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(images.float() / 127.5 - 1, self.grid * 2)
        x = F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)      # (B, grid^2, 4C)
        return x @ self.weight


def tiny_model_config(**overrides):
    from repa.models import model_config
    kwargs = dict(depth=3, hidden_size=32, num_heads=2, input_size=8, in_channels=1, num_classes=3,
                  encoder_depth=2, encoder_dims=(16,), projector_dim=32, space="pixel")
    kwargs.update(overrides)
    return model_config("SiT-S/2", **kwargs)


def tiny_train_config(run_dir, **overrides):
    import dataclasses
    from repa.config import DataConfig, OptimConfig, TrainConfig
    cfg = TrainConfig(model=tiny_model_config(), encoders=("patch-teacher",), run_dir=str(run_dir),
                      global_batch_size=8, max_steps=20, log_every=5, ckpt_every=10,
                      data=DataConfig(num_workers=0, resolution=8), optim=OptimConfig(lr=1e-3), tensorboard=False,
                      ema_decay=0.9)
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture
def tiny_dataset():
    """64 structured 8x8 greyscale images in 3 classes (class = which quadrant is bright)."""
    from repa.data.memory import ArrayDataset
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64)
    images = (rng.random((64, 1, 8, 8)) * 60).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 180
    return ArrayDataset(images, labels, num_classes=3)


@pytest.fixture
def teacher():
    return PatchTeacher(grid=4, dim=16)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """Evaluation caches of the tests go to a temporary folder, never to the user's ~/.cache/repa."""
    import os
    old = os.environ.get("REPA_CACHE")
    os.environ["REPA_CACHE"] = str(tmp_path_factory.mktemp("repa-cache"))
    yield
    if old is None:
        os.environ.pop("REPA_CACHE", None)
    else:
        os.environ["REPA_CACHE"] = old


def load_test_module(filename: str):
    """Another test file of this folder as a module, imported by path (its helpers, without running its tests)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"_helpers_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Many tiny ops: one thread is faster and immune to a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL (f = 2, 4 latent channels) saved to a folder, loaded like the SD-VAE."""
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


def write_tiny_clip(path, width: int = 16, context_length: int = 12, seed: int = 0):
    """A tiny random CLIP text model and a CLIPTokenizer over a written-out character vocabulary (a..z, 0..9 and a
    few merges), saved to ``path`` as ``transformers`` saves them: the real classes, loaded back through the same
    code as ``openai/clip-vit-large-patch14``."""
    import json
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    path.mkdir(parents=True, exist_ok=True)
    symbols = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "f</w>")]
    vocab = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols] + \
        ["th", "the</w>", "an", "of</w>"]
    (path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=context_length)
    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         max_position_embeddings=context_length, bos_token_id=0, eos_token_id=1,
                                         pad_token_id=1))
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """``write_tiny_clip`` once per session."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
