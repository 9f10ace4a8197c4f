"""Samplers over an ``eps_fn(u, t)`` for any `LinearSDE` (pure torch)."""

from .base import SampleNoise, SampleResult, Sampler
from .euler import EulerMaruyama, Heun, ProbabilityFlowEuler
from .gddim import GDDIM
from .rk45 import RK45
from .special import SSCS, Ancestral
from .grids import ExplicitGrid, LogSNRGrid, PowerGrid, QuadraticGrid, TimeGrid, UniformGrid
from .plan import Plan, deterministic_plan, drift_plan, stochastic_plan

__all__ = [
    "GDDIM", "Ancestral", "EulerMaruyama", "Heun", "ProbabilityFlowEuler", "RK45", "SSCS", "ExplicitGrid", "LogSNRGrid", "Plan", "PowerGrid", "QuadraticGrid", "SampleNoise", "SampleResult",
    "Sampler", "TimeGrid", "UniformGrid", "deterministic_plan", "drift_plan", "stochastic_plan",
]
