"""What every sampler shares: per-sample noise, the result type, eps checks and the final denoising step.

An ``eps_fn(u, t)`` maps a state batch ``u [B, *state_shape]`` and times ``t [B]`` (model dtype)
to the ``R``-parameterised noise prediction ``eps`` of the same shape as ``u``
(``score = -R_t^{-T} eps``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..sdes.base import LinearSDE

EpsFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]

DENOISE = ("tweedie", "euler", "none")


class SampleNoise:
    """Per-sample random streams: sample ``k`` draws from its own generator seeded with ``seeds[k]``,
    so it is the same whatever the batch size, batch position or device count (EDM-style).

    The streams are consumed as a sampler draws from them: build a fresh ``SampleNoise`` (same seeds)
    to repeat a run from the same starting point.

    Args:
        seeds: one integer seed per sample.
        device: where the noise lives.
        dtype: floating dtype of the noise (the model dtype).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("SampleNoise needs at least one seed")
        self.seeds = seeds
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int]) -> Tensor:
        """Standard normal ``[B, *shape]``, row ``k`` from generator ``k`` (drawn on CPU, float64)."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes:
        samples: data-space samples ``[B, *data_shape]`` (CLD: the x part).
        state: the full final state ``[B, *state_shape]``.
        nfe: number of ``eps_fn`` calls made (each call counts once for the whole batch).
        info: sampler-specific extras (e.g. RK45's accepted steps).
    """

    samples: Tensor
    state: Tensor
    nfe: int
    info: dict[str, Any] = field(default_factory=dict)


class CountingEps:
    """Wraps an eps_fn: checks shape and finiteness of every output and counts calls."""

    def __init__(self, eps_fn: EpsFn, process: LinearSDE) -> None:
        self.eps_fn = eps_fn
        self.process = process
        self.nfe = 0

    def __call__(self, u: Tensor, t: float, step: int | str) -> Tensor:
        tt = torch.full((u.shape[0],), float(t), dtype=u.dtype, device=u.device)
        eps = self.eps_fn(u, tt)
        self.nfe += 1
        if not isinstance(eps, Tensor) or eps.shape != u.shape:
            shape = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(f"eps_fn returned {shape} at step {step} (t={t:.6g}); expected the state shape "
                             f"{tuple(u.shape)}")
        if not torch.isfinite(eps).all():
            raise FloatingPointError(
                f"eps_fn returned NaN or inf at step {step} (t={t:.6g}); check the network weights "
                "(a diverged checkpoint?) and the input range"
            )
        return eps.to(u.dtype)


class Sampler:
    """Base class: subclasses implement `run` over blocks; `sample` handles the prior and denoising.

    Args:
        t_min: last time of the grid (> 0).
        denoise: final step from ``t_min`` to 0, costing one evaluation: ``"tweedie"`` (posterior
            mean ``Psi(t,0)^{-1}(u - R_t eps)``), ``"euler"`` (noise-free Euler step of the reverse SDE,
            as in the CLD/gDDIM papers) or ``"none"``.
    """

    #: True where every step uses the model only through the reverse-time drift ``G G^T score`` (the
    #: reverse SDE or probability flow). Such a sampler needs the score only on the range of ``G_t``:
    #: for CLD the velocity part, all that a velocity-only network (`CLDModule`) predicts.
    drift_only: bool = False

    def __init__(self, t_min: float = 1e-3, denoise: str = "tweedie") -> None:
        if not t_min > 0:
            raise ValueError(f"t_min must be > 0 (the denoising step covers t_min -> 0), got {t_min}")
        if denoise not in DENOISE:
            raise ValueError(f"denoise={denoise!r} is not one of {DENOISE}")
        self.t_min = float(t_min)
        self.denoise = denoise

    @property
    def needs_full_score(self) -> bool:
        """Whether the sampler uses the score off the range of ``G_t`` (the x part on CLD): every step
        that is not `drift_only`, and Tweedie denoising."""
        return self.denoise == "tweedie" or not self.drift_only

    @property
    def denoise_nfe(self) -> int:
        return 0 if self.denoise == "none" else 1

    def sample(
        self,
        process: LinearSDE,
        eps_fn: EpsFn,
        noise: SampleNoise,
        u_T: Tensor | None = None,
        callback: Callback | None = None,
    ) -> SampleResult:
        """Draw ``len(noise)`` samples.

        Args:
            process: the linear process the model was trained on.
            eps_fn: ``(u, t) -> eps`` (``R`` parameterisation).
            noise: per-sample random streams (also fixes dtype and device).
            u_T: optional initial state ``[B, *state_shape]``; by default ``R_T z`` from ``noise``.
            callback: called after every step with a dict (``step``, ``t``, ``u``, ``eps``).
        """
        self.check(process)
        if u_T is None:
            u_T = process.prior_sample(noise.randn(process.state_shape))
        else:
            process.layout.check_state(u_T, "u_T")
            if u_T.shape[0] != len(noise):
                raise ValueError(f"u_T has batch size {u_T.shape[0]} but noise has {len(noise)} seeds; "
                                 "give one seed per sample")
            u_T = u_T.to(device=noise.device, dtype=noise.dtype)
        counted = CountingEps(eps_fn, process)
        with torch.no_grad():
            u, t_end, info = self.run(process, counted, noise, u_T, callback)
            u = self.final_step(process, counted, u, t_end)
        return SampleResult(process.layout.project(u), u, counted.nfe, info)

    def check(self, process: LinearSDE) -> None:
        """Raises ValueError for settings that cannot run on ``process`` (before anything is sampled)."""
        if not 0 < self.t_min < process.T:
            raise ValueError(f"t_min={self.t_min} must lie in (0, T={process.T}) of {type(process).__name__}")

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, float, dict[str, Any]]:
        """Integrate from ``T`` to ``t_min``; return the state, the time reached, and extras."""
        raise NotImplementedError

    def final_step(self, process: LinearSDE, eps: CountingEps, u: Tensor, t: float) -> Tensor:
        if self.denoise == "none":
            return u
        e = eps(u, t, "denoise")
        lay = process.layout
        tt = torch.tensor(t, dtype=torch.float64)
        y, ye = lay.to_blocks(u), lay.to_blocks(e)
        R = process.R(tt)
        if self.denoise == "tweedie":
            inv_psi = torch.linalg.inv(process.psi(tt, torch.zeros_like(tt)))
            y0 = lay.apply(lay.view(inv_psi.to(u)), y - lay.apply(lay.view(R.to(u)), ye))
        else:  # u_0 = u - t [F u + G G^T R^{-T} eps]
            D = process.GGT(tt) @ torch.linalg.inv(R).transpose(-1, -2)
            y0 = y - t * (lay.apply(lay.view(process.F(tt).to(u)), y) + lay.apply(lay.view(D.to(u)), ye))
        return lay.from_blocks(y0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def check_int(name: str, value: int, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return int(value)
