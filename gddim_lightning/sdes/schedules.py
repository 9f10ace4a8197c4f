"""Noise schedules ``(a_t, sigma_t)`` for the scalar processes (VP, BDM).

A schedule gives ``log a_t^2`` (log signal power) and ``sigma_t^2`` as differentiable float64
torch functions of ``t in [0, 1]``; drift and diffusion follow by forward-mode autodiff, so no
derivative is written by hand:

    f(t) = d/dt log a_t,     g(t)^2 = d sigma_t^2/dt - 2 f(t) sigma_t^2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import finite_param


class NoiseSchedule:
    """Base class: implement `log_alpha2` (``log a_t^2``); ``sigma_t^2 = 1 - a_t^2`` by default."""

    def log_alpha2(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(self.log_alpha2(t))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearSchedule(NoiseSchedule):
    """DDPM/VP-SDE linear ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021).

    ``a_t = exp(-t^2 (beta_max - beta_min)/4 - t beta_min / 2)``, ``sigma_0 = 0``.

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min = finite_param("LinearSchedule", "beta_min", beta_min)
        beta_max = finite_param("LinearSchedule", "beta_max", beta_max)
        if not 0 <= beta_min <= beta_max or beta_max <= 0:
            raise ValueError(f"need 0 <= beta_min <= beta_max, beta_max > 0; got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def log_alpha2(self, t: Tensor) -> Tensor:
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min


class CosineSchedule(NoiseSchedule):
    """Cosine schedule ``a_t^2 = cos^2((t + s) / d * pi/2)`` (Nichol & Dhariwal 2021).

    The improved-DDPM choice ``s = d - 1 = 0.008`` reaches ``a_1 = 0`` (infinite drift at ``T = 1``;
    the discrete version clips ``beta``), so the default is the gDDIM code's ``s=0.004, d=1.008``
    (``a_1 = 0.0062``). Not renormalised at ``t = 0``, so ``sigma_0 > 0`` when ``s > 0``.

    Args:
        s: time offset.
        d: time divisor (must exceed ``1 + s`` so that ``a_1 > 0``).
    """

    def __init__(self, s: float = 0.004, d: float = 1.008) -> None:
        s, d = finite_param("CosineSchedule", "s", s), finite_param("CosineSchedule", "d", d)
        if not (s >= 0 and d > 1 + s - 1e-12 and (1 + s) / d < 1):
            raise ValueError(f"CosineSchedule needs s >= 0 and (1 + s)/d < 1 so a_1 > 0; got s={s}, d={d}")
        self.s = float(s)
        self.d = float(d)

    def log_alpha2(self, t: Tensor) -> Tensor:
        return 2 * torch.log(torch.cos((t + self.s) / self.d * (math.pi / 2)))


class CosineLogSNRSchedule(NoiseSchedule):
    """Cosine log-SNR schedule clipped to ``[logsnr_min, logsnr_max]`` (BDM paper, Hoogeboom & Salimans).

    ``logsnr(t) = -2 log tan(c t + e)`` with ``c, e`` chosen so ``logsnr(0) = logsnr_max`` and
    ``logsnr(1) = logsnr_min``; ``a_t^2 = sigmoid(logsnr)``, ``sigma_t^2 = sigmoid(-logsnr)``.
    """

    def __init__(self, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> None:
        logsnr_min = finite_param("CosineLogSNRSchedule", "logsnr_min", logsnr_min)
        logsnr_max = finite_param("CosineLogSNRSchedule", "logsnr_max", logsnr_max)
        if not logsnr_min < logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    def logsnr(self, t: Tensor) -> Tensor:
        e = math.atan(math.exp(-0.5 * self.logsnr_max))
        c = math.atan(math.exp(-0.5 * self.logsnr_min)) - e
        return -2 * torch.log(torch.tan(c * t + e))

    def log_alpha2(self, t: Tensor) -> Tensor:
        return torch.nn.functional.logsigmoid(self.logsnr(t))

    def sigma2(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.logsnr(t))

