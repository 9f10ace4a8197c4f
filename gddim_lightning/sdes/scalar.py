"""Processes whose blocks are scalars with closed forms: VP (one block) and BDM (one per frequency).

Per block ``k`` the process is ``u_t = m_k(t) u_0 + sigma_t eps`` with a mean scale ``m_k(t)``
(``a_t`` for VP, ``a_t d_{t,k}`` for BDM) and an isotropic noise level ``sigma_t``. Then

    f_k = d/dt log m_k,   g_k^2 = d sigma^2/dt - 2 f_k sigma^2,
    Psi(t, s) = m_k(t) / m_k(s),   Sigma_t = sigma_t^2,   R_t = L_t = sigma_t,
    Psi^(t, s) = Psi(t, s)^{-lambda^2} (sigma_t / sigma_s)^{1 + lambda^2}

(the last from ``g^2/sigma^2 = d log sigma^2/dt - 2 f``, so the stochastic transition integrates
in closed form).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import jvp

from .base import LinearSDE, as_time, finite_param
from .dct import dct_frequencies
from .layout import BlockLayout
from .schedules import CosineLogSNRSchedule, CosineSchedule, LinearSchedule, NoiseSchedule


class ScalarBlockSDE(LinearSDE):
    """Shared closed forms of scalar-block processes; subclasses give `log_mean_scale` and a schedule."""

    schedule: NoiseSchedule

    def log_mean_scale(self, t: Tensor) -> Tensor:
        """``log m_k(t)`` as ``[*S, n]`` float64 (differentiable in t)."""
        raise NotImplementedError

    def sigma2(self, t: Tensor) -> Tensor:
        """``sigma_t^2`` as ``[*S]``."""
        return self.schedule.sigma2(t)

    def _f_and_g2(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_time(t)
        ones = torch.ones_like(t)
        _, f = jvp(self.log_mean_scale, (t,), (ones,))
        s2, ds2 = jvp(self.sigma2, (t,), (ones,))
        g2 = ds2.unsqueeze(-1) - 2 * f * s2.unsqueeze(-1)
        return f, g2

    def F(self, t: Tensor) -> Tensor:
        return self._f_and_g2(t)[0][..., None, None]

    def GGT(self, t: Tensor) -> Tensor:
        return self._f_and_g2(t)[1].clamp_min(0)[..., None, None]

    def Sigma0(self) -> Tensor:
        return self.Sigma(torch.tensor(0.0))

    def psi(self, t: Tensor, s: Tensor) -> Tensor:
        t, s = as_time(t), as_time(s)
        return torch.exp(self.log_mean_scale(t) - self.log_mean_scale(s))[..., None, None]

    def _expand(self, v: Tensor) -> Tensor:
        return v[..., None, None, None].expand(*v.shape, self.n_blocks, 1, 1)

    def Sigma(self, t: Tensor) -> Tensor:
        return self._expand(self.sigma2(as_time(t)))

    def R(self, t: Tensor) -> Tensor:
        return self._expand(self.sigma2(as_time(t)).clamp_min(0).sqrt())

    def L(self, t: Tensor) -> Tensor:
        return self.R(t)

    def psi_hat(self, t: Tensor, s: Tensor, lambda_: float) -> Tensor:
        t, s = torch.broadcast_tensors(as_time(t), as_time(s))
        lam2 = float(lambda_) ** 2
        log_ratio = 0.5 * (torch.log(self.sigma2(t)) - torch.log(self.sigma2(s)))
        log_psi = self.log_mean_scale(t) - self.log_mean_scale(s)
        return torch.exp(-lam2 * log_psi + (1 + lam2) * log_ratio.unsqueeze(-1))[..., None, None]

    def log_snr(self, t: Tensor) -> Tensor:
        t = as_time(t)
        return 2 * self.log_mean_scale(t).mean(-1) - torch.log(self.sigma2(t))

    def noise_to_signal(self, t: Tensor) -> Tensor:
        """``rho_t = sigma_t / a_t`` of the noise schedule alone (for BDM without the blur, as the official
        gDDIM code defines its start time ``rho = 80``)."""
        t = as_time(t)
        return torch.exp(0.5 * (torch.log(self.sigma2(t)) - self.schedule.log_alpha2(t)))


def make_schedule(schedule: str, beta_min: float, beta_max: float) -> NoiseSchedule:
    if schedule == "linear":
        return LinearSchedule(beta_min, beta_max)
    if schedule in ("cosine", "cosine_gddim"):
        return CosineSchedule(s=0.004, d=1.008)
    if schedule == "cosine_logsnr":
        return CosineLogSNRSchedule()
    raise ValueError(
        f"unknown schedule {schedule!r}; choose 'linear', 'cosine', 'cosine_gddim' or 'cosine_logsnr'"
    )


class VPSDE(ScalarBlockSDE):
    """Variance-preserving (DDPM) process: ``F_t = -beta(t)/2 I``, ``G_t = sqrt(beta(t)) I``.

    With the linear schedule, ``a_t = exp(-t^2 (beta_max - beta_min)/4 - t beta_min/2)`` and
    ``sigma_t = sqrt(1 - a_t^2)``. ``R_t = L_t = sigma_t``; order-1 gDDIM is DDIM (eta = 0).

    Args:
        data_shape: shape of one data sample, e.g. ``[2]`` or ``[1, 8, 8]``.
        schedule: ``"linear"``, ``"cosine"`` (= ``"cosine_gddim"``: ``cos^2((t + 0.004)/1.008 pi/2)``, see
            `CosineSchedule`) or ``"cosine_logsnr"`` (clipped cosine log-SNR of the BDM paper).
        beta_min: linear schedule ``beta(0)``.
        beta_max: linear schedule ``beta(1)``.
        T: terminal time.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        T: float = 1.0,
    ) -> None:
        super().__init__(BlockLayout(data_shape, 1, "shared"), T)
        self.schedule = make_schedule(schedule, beta_min, beta_max)

    def log_mean_scale(self, t: Tensor) -> Tensor:
        return 0.5 * self.schedule.log_alpha2(t).unsqueeze(-1)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``a_t`` as ``[*S]``."""
        return torch.exp(0.5 * self.schedule.log_alpha2(as_time(t)))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise level ``sigma_t`` as ``[*S]``."""
        return self.sigma2(as_time(t)).sqrt()

    def describe(self) -> str:
        return f"VPSDE(data_shape={self.data_shape}, schedule={self.schedule!r}, T={self.T})"


class BDM(ScalarBlockSDE):
    """Blurring diffusion (Hoogeboom & Salimans, ICLR 2023): scalar per 2-D DCT frequency.

    In the orthonormal DCT basis, frequency ``k`` evolves as ``y_t = a_t d_{t,k} y_0 + sigma_t eps``
    with ``d_{t,k} = (1 - min_scale) exp(-lambda_k tau_t) + min_scale``,
    ``tau_t = sigma_B(t)^2 / 2``, ``sigma_B(t) = sigma_blur_max sin^2(pi t / 2)``. With
    ``sigma_blur_max = 0`` this is exactly VP with the same noise schedule.

    Args:
        data_shape: ``[C, H, W]`` of one image (any size, any channel count).
        schedule: ``"cosine_logsnr"`` (BDM paper), ``"cosine_gddim"`` (gDDIM code), ``"cosine"`` or ``"linear"``.
        sigma_blur_max: maximal blur (BDM paper 20 on CIFAR-10, gDDIM code 10).
        min_scale: ``d_min``, the smallest frequency scale.
        beta_min: only for ``schedule="linear"``.
        beta_max: only for ``schedule="linear"``.
        T: terminal time.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        schedule: str = "cosine_logsnr",
        sigma_blur_max: float = 20.0,
        min_scale: float = 0.001,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        T: float = 1.0,
    ) -> None:
        data_shape = tuple(data_shape)
        if len(data_shape) != 3:
            raise ValueError(f"BDM needs image data_shape (C, H, W), got {data_shape}")
        sigma_blur_max = finite_param("BDM", "sigma_blur_max", sigma_blur_max, 0.0)
        min_scale = finite_param("BDM", "min_scale", min_scale, 0.0, 1.0, low_open=True)
        super().__init__(BlockLayout(data_shape, 1, "per_frequency", "dct"), T)
        self.schedule = make_schedule(schedule, beta_min, beta_max)
        self.sigma_blur_max = float(sigma_blur_max)
        self.min_scale = float(min_scale)
        self.freqs = dct_frequencies(data_shape[1], data_shape[2]).reshape(-1)

    def blur(self, t: Tensor) -> Tensor:
        """Frequency scales ``d_{t,k}`` as ``[*S, H*W]``."""
        sigma_b = self.sigma_blur_max * torch.sin(t * torch.pi / 2) ** 2
        tau = 0.5 * sigma_b**2
        return (1 - self.min_scale) * torch.exp(-self.freqs * tau.unsqueeze(-1)) + self.min_scale

    def log_blur(self, t: Tensor) -> Tensor:
        """``log d_{t,k}`` as ``[*S, H*W]``."""
        return torch.log(self.blur(t))

    def psi(self, t: Tensor, s: Tensor) -> Tensor:
        # ratio form: one exp per element instead of exp(log m_t - log m_s) (the plan's hot spot)
        t, s = as_time(t), as_time(s)
        a = torch.exp(0.5 * (self.schedule.log_alpha2(t) - self.schedule.log_alpha2(s)))
        return (a.unsqueeze(-1) * (self.blur(t) / self.blur(s)))[..., None, None]

    def log_mean_scale(self, t: Tensor) -> Tensor:
        return 0.5 * self.schedule.log_alpha2(t).unsqueeze(-1) + self.log_blur(t)

    def describe(self) -> str:
        return (f"BDM(data_shape={self.data_shape}, schedule={self.schedule!r}, "
                f"sigma_blur_max={self.sigma_blur_max}, min_scale={self.min_scale}, T={self.T})")
