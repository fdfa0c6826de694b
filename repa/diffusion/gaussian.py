"""The improved-DDPM Gaussian diffusion (Nichol & Dhariwal 2021), as DiT trains and samples it.

Discrete time: integer timesteps 0..T-1 (T = 1000); timestep k is k + 1 noising steps away from the data, and the
network sees the diffusion time t = k / 1000 (DiT embeds the index k itself, see ``repa.models.dit``).

Reads top to bottom like the papers: the beta schedule, the two closed-form densities of the variational bound
(Gaussian KL, discretised Gaussian likelihood), then ``GaussianDiffusion`` with the forward process q(x_t | x_0)
(DDPM Eq. 4), the posterior q(x_{t-1} | x_t, x_0) (DDPM Eqs. 6-7), the learned-range reverse variance (IDDPM
Eq. 15), the variational-bound term L_t (DDPM Eq. 5, in bits per dimension) and the hybrid loss
L_simple + lambda L_vlb (IDDPM Eq. 16); ``space_timesteps`` and ``GaussianDiffusion.respace`` give the respaced
process used for fast sampling (IDDPM Sec. 4).

Coefficients are computed once in float64; per-sample values are gathered and cast to the working dtype
(float32 during training, like the reference code; float64 in the samplers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

NUM_TIMESTEPS = 1000   # the DiT/IDDPM process; the network time is t = timestep / NUM_TIMESTEPS
LOG_PROB_FLOOR = math.log(1e-12)   # the reference's floor on bin probabilities, kept for identical losses


# ---- schedule ------------------------------------------------------------------------------------------------------

def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """DDPM's linear schedule 1e-4 .. 0.02, rescaled so that any ``num_timesteps`` gives the same process (float64)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> set[int]:
    """The timesteps kept by a respaced sampler ("timestep respacing" of IDDPM Sec. 4).

    The process is cut into ``len(section_counts)`` equal sections and section i keeps ``section_counts[i]``
    evenly strided timesteps (first and last included, positions rounded half to even). A string is either
    comma-separated counts (``"250"``, ``"10,15,20"``) or ``"ddimN"``: the integer stride that gives exactly N steps.

    Returns:
        The kept timesteps of the original process, as a set of ints.
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"no integer stride gives exactly {wanted} of {num_timesteps} steps")
        section_counts = [int(part) for part in section_counts.split(",")]
    counts = list(section_counts)
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"section counts must be positive, got {counts}")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps "
                             f"(at most {num_timesteps} steps in total)")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return set(kept)


# ---- the two densities of the variational bound ----------------------------------------------------------------------

def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (arguments broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) under N(means, exp(log_scales)^2) discretised into 256 bins of width 2/255 on [-1, 1] (nats).

    The edge bins extend to -inf (x < -0.999) and +inf (x > 0.999) (DDPM Eq. 13). Unlike the reference code, which
    uses a tanh approximation of the normal CDF, this uses the exact CDF, in log space and on the tail side where
    it is accurate; the floor log(1e-12) of the reference is kept.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    # standardised bin edges; |z| beyond 1e4 changes no value above the floor but breaks log_ndtr's float32 gradient
    upper = (inv_std * (centered + 1.0 / 255.0)).clamp(-1e4, 1e4)
    lower = (inv_std * (centered - 1.0 / 255.0)).clamp(-1e4, 1e4)
    # mass of [lower, upper] computed as Phi(a) - Phi(b) with a > b on the left tail (reflected when right of mean)
    right = centered > 0
    a = torch.where(right, -lower, upper)
    b = torch.where(right, -upper, lower)
    log_a = torch.special.log_ndtr(a)
    one_minus_ratio = -torch.expm1(torch.special.log_ndtr(b) - log_a)   # 1 - Phi(b) / Phi(a), no cancellation
    log_mass = log_a + torch.log(one_minus_ratio.clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, torch.special.log_ndtr(upper),
                            torch.where(x > 0.999, torch.special.log_ndtr(-lower), log_mass))
    return log_probs.clamp(min=LOG_PROB_FLOOR)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.flatten(1).mean(dim=1)


# ---- the diffusion -------------------------------------------------------------------------------------------------

@dataclass
class ReverseStep:
    """p(x_{t-1} | x_t) of one reverse step: mean, variance, log variance and the implied x_0, all (B, C, H, W)."""
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor


class GaussianDiffusion:
    """A discrete Gaussian diffusion with betas (T,), and ``timestep_map`` from its steps to the base process.

    For the base process ``timestep_map`` is the identity; a respaced process (``respace``) keeps a subset of the
    base timesteps and its own betas, and the network is always conditioned on the base timestep.
    """

    def __init__(self, betas: np.ndarray | Sequence[float], *, timestep_map: Sequence[int] | None = None,
                 base_num_timesteps: int | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array of values in (0, 1]")
        T = len(betas)
        self.num_timesteps = T
        self.base_num_timesteps = base_num_timesteps or T
        self.timestep_map = torch.as_tensor(list(timestep_map) if timestep_map is not None else range(T),
                                            dtype=torch.long)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # the posterior variance is 0 at timestep 0: its log is clipped to the value of timestep 1
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if T > 1 else posterior_variance
        arrays = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "one_minus_alphas_cumprod": 1.0 - alphas_cumprod,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(clipped),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            # fixed "large" variance (DDPM sigma^2 = beta), with timestep 0 set for a better decoder likelihood
            "fixed_large_variance": np.append(posterior_variance[1] if T > 1 else betas[0], betas[1:]),
        }
        for name, value in arrays.items():
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(value)))
        self._device_copies: dict[tuple[int, torch.device], torch.Tensor] = {}

    @classmethod
    def linear(cls, num_timesteps: int = NUM_TIMESTEPS) -> "GaussianDiffusion":
        """The DiT process: ``linear_betas(num_timesteps)``."""
        return cls(linear_betas(num_timesteps))

    def respace(self, use_timesteps: Iterable[int]) -> "GaussianDiffusion":
        """The process that visits only ``use_timesteps``, with betas 1 - abar_k / abar_prev (IDDPM Sec. 4)."""
        keep = sorted(set(int(k) for k in use_timesteps))
        if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps to keep must lie in 0..{self.num_timesteps - 1}")
        betas, last = [], 1.0
        for k in keep:
            abar = float(self.alphas_cumprod[k])
            betas.append(1.0 - abar / last)
            last = abar
        return GaussianDiffusion(betas, timestep_map=[int(self.timestep_map[k]) for k in keep],
                                 base_num_timesteps=self.base_num_timesteps)

    def model_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Network time t = base timestep / T_base (float64; k / 1000 for DiT) of this process's timesteps (B,)."""
        base = self._on(self.timestep_map, timesteps.device)[timesteps]
        return base.to(torch.float64) / self.base_num_timesteps

    def _on(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``values`` on ``device``, copied once: a copy per training step would synchronise host and GPU."""
        key = (id(values), torch.device(device))
        if key not in self._device_copies:
            self._device_copies[key] = values.to(device)
        return self._device_copies[key]

    def _gather(self, values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[timesteps] shaped (B, 1, ..., 1) to broadcast against ``like``, in ``like``'s dtype."""
        out = self._on(values, like.device)[timesteps].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    # -- forward process and posterior ----------------------------------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, timesteps: torch.Tensor):
        """q(x_t | x_0) = N(sqrt(abar) x_0, 1 - abar): (mean, variance, log variance), each like x0."""
        mean = self._gather(self.sqrt_alphas_cumprod, timesteps, x0) * x0
        variance = self._gather(self.one_minus_alphas_cumprod, timesteps, x0).expand_as(x0)
        log_variance = self._gather(self.log_one_minus_alphas_cumprod, timesteps, x0).expand_as(x0)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDPM Eq. 4)."""
        return (self._gather(self.sqrt_alphas_cumprod, timesteps, x0) * x0
                + self._gather(self.sqrt_one_minus_alphas_cumprod, timesteps, x0) * noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor):
        """q(x_{t-1} | x_t, x_0) (DDPM Eqs. 6-7): (mean, variance, clipped log variance), each like x_t."""
        mean = (self._gather(self.posterior_mean_coef1, timesteps, x_t) * x0
                + self._gather(self.posterior_mean_coef2, timesteps, x_t) * x_t)
        variance = self._gather(self.posterior_variance, timesteps, x_t).expand_as(x_t)
        log_variance = self._gather(self.posterior_log_variance_clipped, timesteps, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t: torch.Tensor, timesteps: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return (self._gather(self.sqrt_recip_alphas_cumprod, timesteps, x_t) * x_t
                - self._gather(self.sqrt_recipm1_alphas_cumprod, timesteps, x_t) * eps)

    # -- the reverse process --------------------------------------------------------------------------------------

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, *,
                        clip_denoised: bool = False) -> ReverseStep:
        """p(x_{t-1} | x_t) from the network output at x_t.

        Args:
            output: (B, 2C, H, W) epsilon and the variance interpolation v in [-1, 1] (learned range: log variance
                = (v + 1)/2 log beta_t + (1 - v)/2 log posterior variance, IDDPM Eq. 15), or (B, C, H, W) epsilon
                alone (fixed large variance beta_t).
            clip_denoised: clamp the implied x_0 to [-1, 1] (pixel models; DiT samples latents unclipped).
        """
        C = x_t.shape[1]
        if output.shape[1] == 2 * C:
            eps, v = output[:, :C], output[:, C:]
            min_log = self._gather(self.posterior_log_variance_clipped, timesteps, x_t)
            max_log = self._gather(self.log_betas, timesteps, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif output.shape[1] == C:
            eps = output
            log_variance = torch.log(self._gather(self.fixed_large_variance, timesteps, x_t)).expand_as(x_t)
        else:
            raise ValueError(f"network output has {output.shape[1]} channels; expected {C} (epsilon) or {2 * C} "
                             "(epsilon and learned variance)")
        pred_x0 = self.predict_x0_from_eps(x_t, timesteps, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, timesteps)
        return ReverseStep(mean, torch.exp(log_variance), log_variance, pred_x0)

    # -- training ---------------------------------------------------------------------------------------------------

    def vb_terms_bpd(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
        """The variational-bound term L_t per sample, in bits per dimension (B,).

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the discretised decoder NLL -log p(x_0 | x_1) at
        timestep 0 (DDPM Eq. 5).
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, timesteps)
        p = self.p_mean_variance(output, x_t, timesteps)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(timesteps == 0, nll, kl)

    def training_losses(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor,
                        noise: torch.Tensor, *, vlb_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The hybrid loss of IDDPM Eq. 16 per sample: ``{"mse", "vb", "loss"}``, each (B,).

        ``mse`` is L_simple (epsilon MSE, mean over C, H, W). With a learned variance (2C outputs) ``vb`` is L_t
        evaluated on a stop-gradient epsilon, so that it trains only the variance, and enters as
        ``vlb_weight * T / 1000 * vb``: lambda = 0.001 times the full-bound estimate T L_t, which is DiT's loss for
        ``vlb_weight = 1`` and T = 1000 (IDDPM's RESCALED_MSE). Without a learned variance ``vb`` is 0.
        """
        C = x_t.shape[1]
        if output.shape[1] not in (C, 2 * C):
            raise ValueError(f"network output has {output.shape[1]} channels; expected {C} (epsilon) or {2 * C} "
                             "(epsilon and learned variance, model.learn_sigma=true)")
        eps = output[:, :C]
        mse = mean_flat((noise - eps) ** 2)
        if output.shape[1] == 2 * C:
            frozen = torch.cat([eps.detach(), output[:, C:]], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, x_t, timesteps) * (self.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return {"mse": mse, "vb": vb, "loss": mse + vlb_weight * vb}
