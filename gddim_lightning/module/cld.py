"""`CLDModule`: `DiffusionModule` with the CLD paper's training choices (DSM or HSM, velocity-only
networks and losses)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..data.batches import data_batch
from ..samplers.base import Sampler
from ..sdes.cld import CLD
from ..sdes.operators import BlockOp
from .diffusion import DiffusionModule

class CLDModule(DiffusionModule):
    """`DiffusionModule` for CLD with the CLD paper's training options.

    Args:
        score_matching: ``"hsm"`` (hybrid: the initial velocity is marginalised into ``Sigma_0``, the
            gDDIM default) or ``"dsm"`` (the initial velocity ``v0 ~ N(0, gamma M)`` is sampled and the
            regression target is the conditional eps given ``(x0, v0)``).
        loss_on: ``"both"`` (eps on x and v channels, gDDIM) or ``"velocity"`` (loss on the v channels
            only, as the CLD paper's ``L`` parameterisation; with ``parameterization="L"`` the x part of
            eps does not enter the reverse SDE's score term). Default: ``"velocity"`` with a
            velocity-only network, else ``"both"``.
        network_output: ``"both"`` (the network predicts eps on x and v) or ``"velocity"`` (the CLD
            paper's network: it predicts only the v part of the ``L``-parameterised eps, which alone
            gives the velocity score ``-eps_v / L_vv``, all that the reverse SDE and probability flow
            use). Needs ``parameterization="L"``, and samplers that use only that drift
            (`EulerMaruyama`, `Heun`, `RK45`, `SSCS`, ``GDDIM(parameterization="L")``) with ``denoise`` ``"euler"``
            or ``"none"``; gDDIM with ``parameterization="R"`` and Tweedie denoising need the x part as well and
            are refused.
        **kwargs: everything `DiffusionModule` takes.
    """

    def __init__(self, *args: Any, score_matching: str = "hsm", loss_on: str | None = None,
                 network_output: str = "both", **kwargs: Any) -> None:
        if network_output not in ("both", "velocity"):
            raise ValueError(f"model.network_output must be 'both' or 'velocity', got {network_output!r}")
        self._velocity_only = network_output == "velocity"  # read by output_shape during the base init
        if loss_on is None:
            loss_on = "velocity" if self._velocity_only else "both"
        if loss_on not in ("both", "velocity"):
            raise ValueError(f"model.loss_on must be 'both' or 'velocity', got {loss_on!r}")
        if self._velocity_only and loss_on != "velocity":
            raise ValueError("model.loss_on='both' needs a network that predicts both parts; with "
                             "network_output='velocity' the loss is on the velocity part: drop loss_on")
        if self._velocity_only and kwargs.get("parameterization", "R") != "L":
            raise ValueError(
                "model.network_output='velocity' needs model.parameterization='L': only with the Cholesky "
                "factor does the v part of eps determine the velocity score by itself"
            )
        if kwargs.get("precondition", False) and (self._velocity_only or loss_on != "both" or score_matching != "hsm"):
            raise ValueError("model.precondition needs the gDDIM training setting on CLD: network_output 'both', "
                             "loss_on 'both' and score_matching 'hsm' (its target is the unit-variance residual of "
                             "the full eps under hybrid score matching)")
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["process", "backbone", "sampler"])
        if not isinstance(self.process, CLD):
            raise TypeError(f"CLDModule needs a CLD process, got {type(self.process).__name__}")
        if score_matching not in ("hsm", "dsm"):
            raise ValueError(f"model.score_matching must be 'hsm' or 'dsm', got {score_matching!r}")
        self.score_matching = score_matching
        self.loss_on = loss_on
        p = self.process
        # Conditional kernel given (x0, v0): same dynamics, no initial velocity variance.
        self._dsm = CLD(p.data_shape, p.beta0, p.beta_slope, p.m_inv, 0.0, p.eps_num, p.Gamma, p.T)

    @property
    def output_shape(self) -> tuple[int, ...]:
        shape = tuple(self.process.state_shape)
        if self._velocity_only:  # set before the base __init__, which calls this
            return (shape[0] // 2, *shape[1:])  # the state is [x channels, v channels]
        return shape

    def predict_eps(self, u: Tensor, t: Tensor, use_ema: bool = False) -> Tensor:
        if not self._velocity_only:
            return super().predict_eps(u, t, use_ema)
        net = self.ema.ema_model if use_ema else self.net
        # The x part is not predicted: fill it with the exact eps of N(0, I) data. Samplers accepted by
        # `check_sampler` never use it (the drift depends on eps_v alone); it keeps eps well defined.
        gauss = self._gaussian_eps(u, t)
        v = net(u, t).reshape(u.shape[0], -1)
        if self.mixed_score:
            v = v + self._velocity(gauss)
        return torch.cat([self._position(gauss), v], 1).reshape(u.shape)

    @staticmethod
    def _position(a: Tensor) -> Tensor:
        flat = a.reshape(a.shape[0], -1)
        return flat[:, : flat.shape[1] // 2]

    @staticmethod
    def _velocity(a: Tensor) -> Tensor:
        flat = a.reshape(a.shape[0], -1)
        return flat[:, flat.shape[1] // 2 :]

    def check_sampler(self, sampler: Sampler, name: str = "sampler") -> None:
        super().check_sampler(sampler, name)
        if self._velocity_only and sampler.needs_full_score:
            raise ValueError(
                f"{name} {type(sampler).__name__} uses the position score, which a velocity-only network "
                "(model.network_output='velocity') does not predict. Use GDDIM with parameterization='L', SSCS, "
                "EulerMaruyama, Heun or RK45, with denoise 'euler' or 'none' (got denoise="
                f"{sampler.denoise!r}), or train with network_output='both'"
            )

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = data_batch(x0)
        if self.score_matching == "hsm":
            return super().loss(x0, generator)
        p, lay = self.process, self.process.layout
        B, dev = x0.shape[0], x0.device
        t = self.sample_t(B, generator)
        z = torch.randn((B, *p.state_shape), generator=generator, dtype=torch.float64)
        v0 = math.sqrt(p.gamma * p.M) * torch.randn((B, *p.data_shape), generator=generator, dtype=torch.float64)
        u0 = lay.lift(x0.double().cpu()) + torch.cat([torch.zeros_like(v0), v0], 1).reshape(B, *p.state_shape)
        # u_t = Psi(t,0) u0 + K'_t z; the target eps under this module's K_t is K_t^T K'_t^{-T} z.
        Kp = BlockOp(lay, self._dsm.K(t, self.parameterization))
        u = p.ops.mean(t) @ u0 + Kp @ z
        target = (p.ops.K(t, self.parameterization).T @ Kp.inv().T) @ z
        u, target = (v.to(device=dev, dtype=x0.dtype) for v in (u, target))
        eps = self.predict_eps(u, t.to(device=dev, dtype=x0.dtype))
        return self.reduce_loss(eps, target)

    def reduce_loss(self, eps: Tensor, z: Tensor) -> Tensor:
        if self.loss_on == "both":
            return super().reduce_loss(eps, z)
        return ((self._velocity(eps) - self._velocity(z)) ** 2).mean()
