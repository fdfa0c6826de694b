"""REPA-E's trained parts besides the transformer: the VAE, its discriminator, the latent BatchNorm, their optimisers.

End2End-Diffusion/REPA-E (``train_repae.py``), one step:

1. the VAE encodes the images (a posterior sample z) and decodes z;
2. a BatchNorm without affine parameters normalises z for the transformer: in eval mode (running statistics) for
   the VAE's update, in train mode (batch statistics, running statistics updated) for the transformer's;
3. the VAE's loss is its regulariser (``repa.vae_losses``) plus ``vae_align_proj_coeff`` times the REPA alignment
   loss of the transformer's projectors on BN(z) at the step's t and noise: only the VAE is updated by it (the
   transformer's parameters get no gradient from this pass);
4. the discriminator is updated by its hinge loss;
5. the transformer trains on BN(z.detach()): the diffusion loss never reaches the VAE (the stop-gradient that keeps
   the latent space from collapsing).

``EndToEndState`` holds these parts and their state for the checkpoint; ``tune_vae`` runs 1-4 and returns the
transformer's clean input. ``export_vae`` writes the tuned VAE as a diffusers folder whose latents, at the fixed
``LATENT_SCALE`` every other command uses, are the BatchNorm-normalised latents the transformer learned: the
normalisation is folded into its ``quant_conv`` and ``post_quant_conv`` (exact affine maps).
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from repa import distributed
from repa.autoencoder import LATENT_SCALE, PLAIN_NORMALISATION
from repa.autoencoder_repae import fold_latent_norm
from repa.fields import ConfigError
from repa.utils import autocast_context, from_uint8
from repa.vae_losses import PatchDiscriminator, discriminator_loss, generator_loss, load_perceptual

BN_EPS = 1e-4                                   # REPA-E's latent BatchNorm (models/sit.py)


# Other VAE formats: name -> (accepts(source) -> bool, load(source, device) -> module). A module speaks diffusers'
# ``AutoencoderKL`` interface: ``encode(x).latent_dist`` (mean, std, logvar), ``decode(z).sample``, ``config`` (a
# mapping with ``in_channels``, ``scaling_factor``). The default job registers its own small VAE here.
VAE_FORMATS: dict = {}


def load_trainable_vae(source: str, device):
    """The starting VAE in train mode with gradients on: a registered format (``VAE_FORMATS``), else a diffusers
    ``AutoencoderKL`` (``repa.autoencoder.load_vae``: hub id or folder, REPA-E's released ``.pt`` files)."""
    from repa.autoencoder import load_vae
    for accepts, load in VAE_FORMATS.values():
        if accepts(source):
            return load(source, device).train().requires_grad_(True)
    try:
        return load_vae(source, device=device).train().requires_grad_(True)
    except FileNotFoundError as exc:
        raise ConfigError(f"e2e.vae: {str(exc).replace('(`--vae DIR`)', '(`--e2e.vae DIR`)')}") from None


def _latent_stats(vae, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial BatchNorm statistics (mean, var) per latent channel: 0 and 1 / scaling_factor^2. A VAE's own shift
    or ``latents_mean``/``latents_std`` is already folded into its weights by ``load_vae``
    (``repa.autoencoder.fold_config_normalisation``; REPA-E's ``-latents-stats.pt`` likewise)."""
    return torch.zeros(channels), torch.full((channels,), 1.0 / float(vae.config["scaling_factor"]) ** 2)


class EndToEndState:
    """The parts REPA-E trains besides the transformer; ``state_dict`` / ``load_state_dict`` are inverses and go
    into the checkpoint under ``objective_state`` (``repa.checkpoint.TrainingState``)."""

    def __init__(self, cfg, device):
        e, o = cfg.e2e, cfg.optim
        self.cfg = cfg
        self.vae = load_trainable_vae(e.vae, device)
        m, res, colours = cfg.model, cfg.data.resolution, self.vae.config["in_channels"]
        with torch.no_grad():                                           # the latent shape of this resolution
            probe = torch.zeros(1, colours, res, res, device=device)
            channels, h, w = self.vae.encode(probe).latent_dist.mean.shape[1:]
        if (m.in_channels, m.input_size, m.input_size) != (channels, h, w):
            raise ConfigError(f"e2e.vae gives {channels}x{h}x{w} latents of {res}px images; set --model.in-channels "
                              f"{channels} --model.input-size {h}")
        self.latent_shape = (channels, h, w)
        self.disc = PatchDiscriminator(colours, e.disc_channels, e.disc_layers).to(device).train()
        if e.disc_weights:                    # REPA-E's released SD-VAE discriminator has this very layout
            from repa.integrity import load_state_dict_file
            try:
                self.disc.load_state_dict(load_state_dict_file(e.disc_weights, "discriminator"))
            except RuntimeError as exc:
                raise ConfigError(f"e2e.disc_weights: {e.disc_weights} does not fit a PatchGAN with "
                                  f"disc_layers={e.disc_layers}, disc_channels={e.disc_channels}: "
                                  f"{str(exc).splitlines()[1 if len(str(exc).splitlines()) > 1 else 0]}") from None
        self.perceptual = load_perceptual(e, device)
        self.norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=e.bn_momentum, affine=False).to(device)
        mean, var = _latent_stats(self.vae, channels)
        self.norm.running_mean.copy_(mean)
        self.norm.running_var.copy_(var)
        self.norm_ema = {"mean": self.norm.running_mean.clone(), "var": self.norm.running_var.clone()}

        def adamw(params, lr):
            return torch.optim.AdamW(params, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
        self.opt_vae = adamw(self.vae.parameters(), e.vae_lr)
        self.opt_disc = adamw(self.disc.parameters(), e.disc_lr)
        fp16 = cfg.precision == "fp16"
        self.scalers = [torch.amp.GradScaler(torch.device(device).type) if fp16 else None for _ in range(2)]

    def state_dict(self) -> dict:
        return {"vae": self.vae.state_dict(), "vae_config": json.dumps(dict(self.vae.config)),
                "discriminator": self.disc.state_dict(), "latent_norm": self.norm.state_dict(),
                "latent_norm_ema": dict(self.norm_ema), "opt_vae": self.opt_vae.state_dict(),
                "opt_disc": self.opt_disc.state_dict(),
                "scalers": [s.state_dict() if s is not None else {} for s in self.scalers]}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.disc.load_state_dict(state["discriminator"])
        self.norm.load_state_dict(state["latent_norm"])
        self.norm_ema = {k: v.to(self.norm.running_mean.device).clone() for k, v in state["latent_norm_ema"].items()}
        self.opt_vae.load_state_dict(state["opt_vae"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        for scaler, saved in zip(self.scalers, state["scalers"]):
            if scaler is not None and saved:
                scaler.load_state_dict(saved)


def _update(loss: torch.Tensor, params: list, opt, scaler, clip: float) -> torch.Tensor:
    """One optimiser step of ``params`` on ``loss`` alone (``autograd.grad``: no other module's ``.grad`` is
    touched), gradients averaged over ranks, clipped; returns the gradient norm."""
    grads = torch.autograd.grad(scaler.scale(loss) if scaler is not None else loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = distributed.all_reduce_mean(torch.zeros_like(p) if g is None else g)     # the global batch's mean
    if scaler is not None:
        scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(params, clip or float("inf"))
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


def _batch_norm_train(norm: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """``norm`` in train mode over the global batch: batch statistics normalise ``z`` and update the running ones
    (unbiased variance), computed over all ranks as REPA-E's SyncBatchNorm does (on any device)."""
    if distributed.world_size() == 1:
        return norm.train()(z)
    count = z.numel() // z.shape[1] * distributed.world_size()
    mean = distributed.all_reduce_mean(z.mean((0, 2, 3)))
    var = distributed.all_reduce_mean(z.pow(2).mean((0, 2, 3))) - mean.pow(2)              # biased, (C,)
    norm.running_mean.lerp_(mean, norm.momentum)
    norm.running_var.lerp_(var * count / (count - 1), norm.momentum)
    norm.num_batches_tracked += 1
    return (z - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + norm.eps).sqrt()


def tune_vae(state: EndToEndState, images_uint8: torch.Tensor, posterior_noise: torch.Tensor, align,
             step: int) -> tuple[torch.Tensor, dict]:
    """Steps 1-4 of the module docstring; returns the transformer's clean input BN(z.detach()) (B, C, h, w) and
    the logged terms.

    Args:
        images_uint8: (B, 3, H, W) this rank's images.
        posterior_noise: (B, C, h, w) standard normal draws of the posterior sample.
        align: ``x_normalised -> scalar`` the alignment loss of the transformer's projectors at the step's t and
            noise (the objective binds them); its gradient reaches the VAE only.
    """
    cfg, e = state.cfg, state.cfg.e2e
    dev = images_uint8.device
    images = from_uint8(images_uint8).float()                           # (B, 3, H, W) in [-1, 1]
    with autocast_context(cfg.precision, dev):
        posterior = state.vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * posterior_noise.to(posterior.mean.dtype)   # (B, C, h, w)
        recon = state.vae.decode(z).sample
        state.norm.eval()                                               # running statistics, no update
        vae_align = align(state.norm(z))
    reg, terms = generator_loss(images, recon, posterior.mean, posterior.logvar, state.disc, state.perceptual, e,
                                step)
    vae_loss = reg + e.vae_align_proj_coeff * vae_align.float()
    terms.update(vae_align_loss=vae_align.detach(), vae_loss=vae_loss.detach(),
                 vae_grad_norm=_update(vae_loss, list(state.vae.parameters()), state.opt_vae, state.scalers[0],
                                       cfg.optim.grad_clip))
    d_loss, d_terms = discriminator_loss(images, recon, state.disc, e, step)
    terms.update(d_terms, disc_grad_norm=_update(d_loss, list(state.disc.parameters()), state.opt_disc,
                                                 state.scalers[1], cfg.optim.grad_clip))
    with torch.no_grad():
        x0 = _batch_norm_train(state.norm, z.detach().float())
        for key, live in (("mean", state.norm.running_mean), ("var", state.norm.running_var)):
            state.norm_ema[key].lerp_(live, 1.0 - cfg.ema_decay)        # REPA-E's EMA also averages the BN buffers
    return x0, {k: torch.as_tensor(v, device=dev).float() for k, v in terms.items()}


# ---- export: the tuned VAE as a diffusers folder ---------------------------------------------------------------

def export_vae(objective_state: dict, out: str | os.PathLike) -> str:
    """Write the tuned VAE of an end-to-end checkpoint's ``objective_state`` to the diffusers folder ``out``
    (``repa prepare --vae out``, ``repa sample --vae out``), with the latent normalisation of the EMA BatchNorm
    statistics folded in (REPA-E's ``save_vae_weights.py`` takes the EMA's statistics too)."""
    from diffusers import AutoencoderKL
    config = json.loads(objective_state["vae_config"])
    if config.get("_class_name") != "AutoencoderKL":
        raise ConfigError(f"the tuned VAE is a {config.get('_class_name', 'non-diffusers')} model; only a diffusers "
                          "AutoencoderKL is exported as a folder")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(PLAIN_NORMALISATION)
    vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(objective_state["vae"])
    stats = objective_state["latent_norm_ema"]
    fold_latent_norm(vae, stats["mean"].cpu(), stats["var"].cpu(), eps=BN_EPS, scale=LATENT_SCALE)
    vae.save_pretrained(os.fspath(out), safe_serialization=True)
    return os.fspath(out)
