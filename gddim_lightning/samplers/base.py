"""What every sampler shares: per-sample noise, the result type, eps checks and the final denoising step.

An ``eps_fn(u, t)`` maps a state batch ``u [B, *state_shape]`` and times ``t [B]`` (model dtype)
to the ``R``-parameterised noise prediction ``eps`` of the same shape as ``u``
(``score = -R_t^{-T} eps``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import math
from typing import Any

import torch
from torch import Tensor

from ..limits import MAX_NFE
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
        t_start: first time of the grid, where the prior ``N(0, Sigma_t)`` is drawn (default: the
            process's ``T``).
        rho_start: start instead where the noise-to-signal ratio `LinearSDE.noise_to_signal` equals
            this (the official gDDIM BDM sampler: 80, EDM's ``sigma_max``); ``T`` if the process never
            gets that noisy. Give ``t_start`` or ``rho_start``, not both.
    """

    #: True where every step uses the model only through the reverse-time drift ``G G^T score`` (the
    #: reverse SDE or probability flow). Such a sampler needs the score only on the range of ``G_t``:
    #: for CLD the velocity part, all that a velocity-only network (`CLDModule`) predicts.
    drift_only: bool = False

    #: network evaluations per grid step (Heun: 2); ``nfe = evals_per_step * n_steps + denoise_nfe``
    evals_per_step: int = 1

    def __init__(self, t_min: float = 1e-3, denoise: str = "tweedie", t_start: float | None = None,
                 rho_start: float | None = None) -> None:
        if not t_min > 0:
            raise ValueError(f"t_min must be > 0 (the denoising step covers t_min -> 0), got {t_min}")
        if denoise not in DENOISE:
            raise ValueError(f"denoise={denoise!r} is not one of {DENOISE}")
        if t_start is not None and rho_start is not None:
            raise ValueError(f"give t_start or rho_start, not both (got {t_start} and {rho_start})")
        if t_start is not None and not (math.isfinite(t_start) and t_start > t_min):
            raise ValueError(f"t_start must be a finite time above t_min={t_min}, got {t_start}")
        if rho_start is not None and not (math.isfinite(rho_start) and rho_start > 0):
            raise ValueError(f"rho_start must be a positive finite noise-to-signal ratio, got {rho_start}")
        self.t_min = float(t_min)
        self.denoise = denoise
        self.t_start = None if t_start is None else float(t_start)
        self.rho_start = None if rho_start is None else float(rho_start)

    def start_time(self, process: LinearSDE) -> float:
        """The first grid time on ``process``: ``t_start``, the time of ``rho_start``, or ``T``."""
        if self.t_start is not None:
            return self.t_start
        if self.rho_start is not None:
            return process.time_at_rho(self.rho_start)
        return process.T

    @property
    def needs_full_score(self) -> bool:
        """Whether the sampler uses the score off the range of ``G_t`` (the x part on CLD): every step
        that is not `drift_only`, and Tweedie denoising."""
        return self.denoise == "tweedie" or not self.drift_only

    @property
    def denoise_nfe(self) -> int:
        return 0 if self.denoise == "none" else 1

    def set_nfe(self, nfe: int) -> None:
        """Checks and stores the total NFE of a fixed-grid sampler: at least one grid step plus the
        denoising evaluation, and whole steps of `evals_per_step` evaluations each."""
        k, d = self.evals_per_step, self.denoise_nfe
        step = "one grid step" if k == 1 else f"one grid step of {k} evaluations"
        self.nfe = check_int("nfe", nfe, k + d, f" ({step} plus {d} denoising evaluation)" if d else "")
        if (self.nfe - d) % k:
            raise ValueError(f"{type(self).__name__} uses {k} evaluations per step: nfe - {d} (denoising) must be "
                             f"{'even' if k == 2 else f'a multiple of {k}'}, got nfe={nfe}")

    @property
    def n_steps(self) -> int:
        """Grid steps of a fixed-grid sampler: the NFE left after denoising, `evals_per_step` per step."""
        return (self.nfe - self.denoise_nfe) // self.evals_per_step

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
            u_T: optional initial state ``[B, *state_shape]`` at the start time; by default ``R_t z``
                from ``noise`` at `start_time`.
            callback: called after every step with a dict (``step``, ``t``, ``u``, ``eps``).
        """
        self.check(process)
        if u_T is None:
            u_T = process.prior_sample(noise.randn(process.state_shape), self.start_time(process))
        else:
            process.layout.check_state(u_T, "u_T")
            if u_T.shape[0] != len(noise):
                raise ValueError(f"u_T has batch size {u_T.shape[0]} but noise has {len(noise)} seeds; "
                                 "give one seed per sample")
            u_T = u_T.to(device=noise.device, dtype=noise.dtype)
        counted = CountingEps(eps_fn, process)
        with torch.no_grad():
            u, info = self.run(process, counted, noise, u_T, callback)
            u = self.final_step(process, counted, u)
        return SampleResult(process.layout.project(u), u, counted.nfe, info)

    def check(self, process: LinearSDE) -> None:
        """Raises ValueError for settings that cannot run on ``process`` (before anything is sampled)."""
        if not 0 < self.t_min < process.T:
            raise ValueError(f"t_min={self.t_min} must lie in (0, T={process.T}) of {type(process).__name__}")
        start = self.start_time(process)
        if not self.t_min < start <= process.T:
            raise ValueError(f"the sampler starts at t={start:.6g} (t_start={self.t_start}, rho_start={self.rho_start}),"
                             f" which must lie in (t_min={self.t_min}, T={process.T}] of {type(process).__name__}")

    def times(self, process: LinearSDE, n_steps: int | None = None) -> Tensor:
        """The sampler's grid: ``n_steps + 1`` times (default `n_steps`) from `start_time` to ``t_min``."""
        return self.grid(process, self.n_steps if n_steps is None else n_steps, self.t_min, self.start_time(process))

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        """Integrate ``u`` from `start_time` to ``t_min``; return the state reached at ``t_min`` and
        sampler-specific extras (e.g. ``{"times": grid}``)."""
        raise NotImplementedError

    def final_step(self, process: LinearSDE, eps: CountingEps, u: Tensor) -> Tensor:
        """The denoising step from ``t_min`` to 0 (one evaluation; none for ``denoise="none"``)."""
        if self.denoise == "none":
            return u
        t = self.t_min
        e = eps(u, t, "denoise")
        ops = process.ops
        if self.denoise == "tweedie":  # u_0 = Psi(t, 0)^{-1} (u - R_t eps)
            return ops.mean(t).inv() @ (u - ops.R(t) @ e)
        # noise-free Euler step of the reverse SDE: u_0 = u - t [F_t u + G G^T R^{-T} eps]
        return u - t * (ops.F(t) @ u + ops.score_drift(t) @ e)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def check_int(name: str, value: int, minimum: int, hint: str = "") -> int:
    """``value`` as an int ``>= minimum``; ``nfe`` is also bounded by `limits.MAX_NFE`."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    if name == "nfe" and int(value) > MAX_NFE:
        raise ValueError(f"nfe must be at most {MAX_NFE} (gddim_lightning.limits.MAX_NFE), got {value!r}")
    return int(value)
