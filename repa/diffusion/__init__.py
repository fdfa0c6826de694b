"""The improved-DDPM Gaussian diffusion (DiT's objective and sampler) and REPA on top of it.

- ``GaussianDiffusion``: forward process, posterior, learned-range reverse variance, variational bound, hybrid
  loss; ``space_timesteps`` / ``GaussianDiffusion.respace`` for respaced sampling.
- ``iddpm_repa_loss``: the REPA objective with the hybrid denoising loss (``objective.kind = "iddpm"``).
- ``ddpm``: ancestral sampling with classifier-free guidance (``repa.sample(..., sampler="ddpm")``).
"""
from repa.diffusion.gaussian import (NUM_TIMESTEPS, GaussianDiffusion, ReverseStep,
                                     discretized_gaussian_log_likelihood, linear_betas, normal_kl, space_timesteps)
from repa.diffusion.objective import VLB_WEIGHT, base_diffusion, iddpm_repa_loss, timesteps_from_time
from repa.diffusion.sampling import DEFAULT_STEPS, ddpm, ddpm_times

__all__ = ["NUM_TIMESTEPS", "GaussianDiffusion", "ReverseStep", "discretized_gaussian_log_likelihood",
           "linear_betas", "normal_kl", "space_timesteps", "VLB_WEIGHT", "base_diffusion", "iddpm_repa_loss",
           "timesteps_from_time", "DEFAULT_STEPS", "ddpm", "ddpm_times"]
