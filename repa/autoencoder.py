"""The SD-VAE (diffusers ``AutoencoderKL``) and its latent scale: the only place they live.

The reference recipe stores the VAE posterior of every training image once (mean and std, as the REPA code's preprocessing does),
draws a fresh sample ``mean + std * eps`` at every step and multiplies it by ``LATENT_SCALE``; generated latents are
divided by it again before decoding. Images enter the VAE in [-1, 1].
"""
from __future__ import annotations

import os
import warnings

import torch

from repa.utils import from_uint8, to_uint8

LATENT_SCALE = 0.18215                          # SD-VAE scaling factor (sd-vae-ft-mse / -ema); no shift
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"       # training latents; the paper decodes samples with sd-vae-ft-ema
DECODE_VAE = "stabilityai/sd-vae-ft-ema"
# The config of a VAE whose latents need only LATENT_SCALE (its own normalisation folded in, or none)
PLAIN_NORMALISATION = {"scaling_factor": LATENT_SCALE, "shift_factor": None, "latents_mean": None, "latents_std": None}


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a local folder rather than a hub id ("owner/name")."""
    return source.startswith(("/", "./", "../", "~")) or source.count("/") != 1


def load_vae(source: str = DEFAULT_VAE, device=None, dtype: torch.dtype = torch.float32):
    """Load an ``AutoencoderKL`` in eval mode with gradients off.

    Args:
        source: a hub id ("stabilityai/sd-vae-ft-mse") or a local folder holding ``config.json`` and the weights
            (a whole Stable Diffusion folder with a ``vae/`` sub-folder also works), or REPA-E's released
            autoencoder (``NAME.pt`` or its folder: ``repa.autoencoder_repae``).
        device: where to put it (default CPU).
        dtype: parameter dtype.
    Returns:
        diffusers.AutoencoderKL.
    Raises:
        FileNotFoundError: the folder does not exist, or the hub id cannot be fetched (offline); the message says
            how to provide the weights locally.
    """
    from diffusers import AutoencoderKL

    source = os.fspath(source)
    from repa.autoencoder_repae import is_repae_source, load_repae_vae
    if is_repae_source(source):                  # REPA-E's released autoencoders: NAME.pt (+ -latents-stats.pt)
        return load_repae_vae(source, scale=LATENT_SCALE).to(device, dtype)
    expanded = os.path.expanduser(source)
    hub_id = DEFAULT_VAE if looks_like_path(source) else source
    how = (f"download it once where the internet is reachable (`huggingface-cli download {hub_id} "
           f"--local-dir {hub_id.split('/')[-1]}`, or `AutoencoderKL.from_pretrained(...).save_pretrained(DIR)`) and pass "
           f"that folder instead (`--vae DIR`)")
    import importlib.util
    # without accelerate, diffusers would warn on every load that it falls back to this default: ask for it
    kwargs = {"torch_dtype": dtype, "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")) and \
                os.path.isfile(os.path.join(expanded, "vae", "config.json")):
            kwargs["subfolder"] = "vae"
        elif not os.path.isfile(os.path.join(expanded, "config.json")):
            raise FileNotFoundError(f"VAE folder {source!r} has no config.json (nor vae/config.json); it must be a "
                                    f"diffusers AutoencoderKL folder: {how}")
        source = expanded
    elif looks_like_path(source):
        raise FileNotFoundError(f"VAE folder {source!r} does not exist; {how}")
    from repa.offline import hub_is_reachable, offline_hint
    try:
        with warnings.catch_warnings():   # diffusers passes huggingface_hub an argument it ignores (a warning)
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            try:   # the local hub cache first: no network round trips when the weights are already here
                vae = AutoencoderKL.from_pretrained(source, local_files_only=True, **kwargs)
            except (OSError, ValueError):
                if os.path.isdir(source) or not hub_is_reachable():   # no retries for a minute when offline
                    raise
                vae = AutoencoderKL.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # hub unreachable, missing weight files, bad config
        why = str(exc).splitlines()[0] if os.path.isdir(source) or hub_is_reachable() else offline_hint()
        raise FileNotFoundError(f"could not load the VAE {source!r}: {why}; {how}") from None
    vae.requires_grad_(False)
    fold_config_normalisation(vae, source)
    return vae.to(device).eval()


def fold_config_normalisation(vae, source: str = "the VAE") -> None:
    """Give ``vae`` (an AutoencoderKL) repa's latent convention: model-space latents = z * ``LATENT_SCALE``.

    A VAE whose config asks for another normalisation (``scaling_factor`` other than 0.18215, ``shift_factor``,
    or per-channel ``latents_mean``/``latents_std``, as REPA-E's diffusers releases ``REPA-E/e2e-*-hf``) gets it
    folded into ``quant_conv``/``post_quant_conv`` (``repa.autoencoder_repae.fold_latent_norm``), diffusers'
    formula: model = (z - latents_mean) * scaling_factor / latents_std, else (z - shift_factor) * scaling_factor.
    Its config then says 0.18215 and nothing else, so a saved copy is not normalised twice. The SD-VAE is left as it
    is (bit for bit). Raises ConfigError when the normalisation cannot be folded (no quant convolutions)."""
    from repa.autoencoder_repae import fold_latent_norm
    from repa.config import ConfigError
    cfg = vae.config
    sf = float(getattr(cfg, "scaling_factor", None) or LATENT_SCALE)
    shift, mean, std = getattr(cfg, "shift_factor", None), getattr(cfg, "latents_mean", None), \
        getattr(cfg, "latents_std", None)
    if sf == LATENT_SCALE and not shift and mean is None and std is None:
        return
    c, per_channel = int(cfg.latent_channels), mean is not None and std is not None
    if per_channel:
        mean, std = torch.tensor(mean, dtype=torch.float64).flatten(), torch.tensor(std, dtype=torch.float64).flatten()
        if mean.numel() != c or std.numel() != c:
            raise ConfigError(f"{source}: latents_mean/latents_std have {mean.numel()}/{std.numel()} values for "
                              f"{c} latent channels; fix its config.json")
    else:
        mean, std = torch.full((c,), float(shift or 0.0), dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    if getattr(vae, "quant_conv", None) is None or getattr(vae, "post_quant_conv", None) is None:
        raise ConfigError(f"{source}: its latents are normalised by its config (scaling_factor {sf:g}, shift "
                          f"{shift}, per-channel statistics {'yes' if per_channel else 'no'}) "
                          "and it has no quant_conv to fold that into; repa trains on VAEs with quant convolutions "
                          "(SD-VAE and its kind)")
    fold_latent_norm(vae, mean, (std / sf).pow(2), eps=0.0, scale=LATENT_SCALE)
    vae.register_to_config(**PLAIN_NORMALISATION)


_DECODERS: dict = {}


def cached_vae(source: str = DECODE_VAE, device=None, dtype: torch.dtype = torch.float32):
    """``load_vae`` once per (source, device, dtype) in this process: training previews and repeated grids reuse it."""
    key = (os.fspath(source), str(torch.device(device) if device is not None else torch.device("cpu")), dtype)
    if key not in _DECODERS:
        _DECODERS[key] = load_vae(source, device=device, dtype=dtype)
    return _DECODERS[key]


def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    param = next(vae.parameters())
    return param.device, param.dtype


@torch.no_grad()
def encode_moments(vae, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior moments of a batch of images.

    Args:
        vae: an AutoencoderKL.
        images_uint8: uint8 (B, 3, H, W) tensor or numpy array, H and W multiples of the VAE's downsampling factor.
    Returns:
        (mean, std), float32 (B, latent_channels, H/f, W/f) on the VAE's device, unscaled (multiply samples by
        ``LATENT_SCALE``).
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"encode_moments needs uint8 RGB images (B, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}; greyscale data is trained in pixel space or prepared with 3 channels")
    device, dtype = _vae_device_dtype(vae)
    x = from_uint8(images.to(device)).to(dtype)                         # (B, 3, H, W) in [-1, 1]
    posterior = vae.encode(x).latent_dist
    return posterior.mean.float(), posterior.std.float()


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None, *,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """Draw ``(mean + std * eps) * LATENT_SCALE`` with eps ~ N(0, I): the training input of latent models.

    Args:
        mean, std: stored posterior moments (B, 4, h, w), any float dtype (computed in float32).
        generator: optional torch.Generator on the tensors' device.
        eps: the standard normal draw itself (the trainer draws it for the whole global batch).
    """
    mean, std = mean.float(), std.float()
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * eps.to(mean.device, mean.dtype)) * LATENT_SCALE


@torch.no_grad()
def decode(vae, latents_scaled: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents into uint8 images.

    Args:
        vae: an AutoencoderKL.
        latents_scaled: (B, 4, h, w) model-space latents (already multiplied by ``LATENT_SCALE``).
    Returns:
        uint8 (B, 3, H, W) on the VAE's device, ``clamp(127.5 (x + 1), 0, 255)`` truncated like the reference.
    """
    device, dtype = _vae_device_dtype(vae)
    return to_uint8(vae.decode(latents_scaled.to(device, dtype) / LATENT_SCALE).sample)
