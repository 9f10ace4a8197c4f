"""Block EDM preconditioning: exact claims checked with Gaussian(-mixture) oracles in float64.

* with Gaussian data of scale sigma_data the ideal network output is exactly 0;
* the regression target has unit variance per block (Monte Carlo) and is the weighted eps error;
* the optimum is the plain DSM optimum: the exact eps of any mixture is reachable, and the loss is
  minimised there;
* the module trains and samples through it (and refuses it beside mixed_score).
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import F64
from torch import nn

from gddim_lightning.module import CLDModule, DiffusionModule
from gddim_lightning.nets import Preconditioner
from gddim_lightning.oracles import Gaussian, ring_mixture
from gddim_lightning.samplers import GDDIM
from gddim_lightning.sdes import BDM, CLD, VPSDE, BlockOp

PROCESSES = {
    "vp": lambda: VPSDE((2,)),
    "cld": lambda: CLD((2,)),
    "bdm": lambda: BDM((1, 4, 4), sigma_blur_max=2.0),
    "bdm_cosine": lambda: BDM((1, 4, 4), schedule="cosine_gddim", sigma_blur_max=2.5),
}
TIMES = [1e-4, 0.05, 0.3, 0.7, 0.99]


def pinv_sym(w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of symmetric blocks from their eigendecomposition (null directions: relative 1e-10)."""
    keep = w > 1e-10 * w.abs().amax(-1, keepdim=True)
    inv = torch.where(keep, 1 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
    return (V * inv.unsqueeze(-2)) @ V.transpose(-1, -2)


def batch_t(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=F64)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("kind", ["R", "L"])
def test_gaussian_data_needs_zero_network_output(name, kind):
    """The skip term is the exact eps of N(0, sigma_data^2 I): the network has nothing left to do."""
    p = PROCESSES[name]()
    pre = Preconditioner(p, sigma_data=0.7, parameterization=kind)
    exact = Gaussian(torch.zeros(p.data_shape, dtype=F64), 0.7).eps_fn(p, kind)
    g = torch.Generator().manual_seed(0)
    for t in TIMES:
        u = 2 * torch.randn(8, *p.state_shape, generator=g, dtype=F64)
        tt = batch_t(t, 8)
        assert torch.allclose(pre.skip_eps(u, tt), exact(u, tt), rtol=1e-9, atol=1e-9), t
        # and with a zero network the preconditioned eps is that exact eps
        assert torch.allclose(pre.eps(lambda v, s: torch.zeros_like(v), u, tt), exact(u, tt), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("kind", ["R", "L"])
def test_target_has_unit_variance_and_is_the_weighted_eps_error(name, kind):
    p = PROCESSES[name]()
    sd = 0.5
    pre = Preconditioner(p, sigma_data=sd, parameterization=kind)
    g = torch.Generator().manual_seed(1)
    n = 20000
    lay = p.layout
    for t in TIMES:
        tt = batch_t(t, n)
        x0 = sd * torch.randn(n, *p.data_shape, generator=g, dtype=F64)
        z = torch.randn(n, *p.state_shape, generator=g, dtype=F64)
        u = p.perturb(x0, tt, z, kind)
        net = lambda v, s: torch.zeros_like(v)  # noqa: E731
        pred, target = pre.regression(net, u, tt, x0, z)
        # per block, the target is one unit-variance direction (the residual is rank one): E|target|^2 = 1
        power = (lay.to_blocks(target) ** 2).sum(1).mean(0)  # [*data_shape]
        assert torch.allclose(power, torch.ones_like(power), atol=0.05), (t, power)
        # it equals S^+ (z - A u), computed here the direct way (float64: no cancellation problem at n=4)
        c = pre.coefficients(tt[:4])
        S = c.out.data
        w, V = torch.linalg.eigh(S)
        S_pinv = BlockOp(p.layout, pinv_sym(w, V))
        direct = S_pinv @ (z[:4] - c.skip @ u[:4])
        assert torch.allclose(target[:4], direct, rtol=1e-6, atol=1e-6 * direct.abs().max().item()), t


@pytest.mark.parametrize("name", list(PROCESSES))
def test_same_optimum_as_plain_dsm(name):
    """The exact eps of a mixture is representable (eps - A u lies where S acts), and the weighted loss is
    smallest there: a perturbation of the ideal output raises it by its own (projected) size."""
    p = PROCESSES[name]()
    mix = ring_mixture(p.data_shape, k=4, std=0.2, seed=3)
    mix = type(mix)(mix.weights, 0.5 * mix.means, mix.stds)
    pre = Preconditioner(p, sigma_data=0.5)
    exact = mix.eps_fn(p, "R")
    g = torch.Generator().manual_seed(2)
    n = 4000
    for t in (0.05, 0.5, 0.95):
        tt = batch_t(t, n)
        x0 = mix.sample(n, generator=g).to(F64)
        z = torch.randn(n, *p.state_shape, generator=g, dtype=F64)
        u = p.perturb(x0, tt, z)
        c = pre.coefficients(tt)
        e = exact(u, tt)
        resid = e - c.skip @ u
        # the ideal output F* = S^+ resid reproduces eps exactly
        w, V = torch.linalg.eigh(c.out.data)
        F_star = BlockOp(p.layout, pinv_sym(w, V)) @ resid
        ideal = lambda v, s, F=F_star: F  # noqa: E731
        assert torch.allclose(pre.eps(ideal, u, tt), e, rtol=1e-7, atol=1e-7)
        delta = 0.1 * torch.randn(n, *p.state_shape, generator=g, dtype=F64)
        pred, target = pre.regression(ideal, u, tt, x0, z)
        pred_d, _ = pre.regression(lambda v, s: F_star + delta, u, tt, x0, z)
        base = ((pred - target) ** 2).mean()
        worse = ((pred_d - target) ** 2).mean()
        added = ((c.proj @ delta) ** 2).mean()
        # E[worse - base] = E|P delta|^2 exactly when F* is the conditional mean of the target
        assert abs((worse - base - added).item()) < 5 * (2 * 0.1 * ((pred - target) ** 2).mean().sqrt() / n**0.5).item() + 1e-3
        assert worse > base


def test_bdm_output_scale_vanishes_on_erased_frequencies():
    """BDM: where the blur has erased a frequency, eps is fixed by u and the network's output is scaled away."""
    p = BDM((1, 8, 8), sigma_blur_max=2.0)
    pre = Preconditioner(p, sigma_data=0.5)
    s = pre.coefficients(batch_t(0.95, 1)).out.data.reshape(-1)  # per frequency
    assert s[0] > 0.01 and s[-1] < 2e-3 * s[0]  # down to min_scale = 1e-3 relative


class Raw(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, u, t):
        return 0 * u + self.lin.weight.sum() * 0


@pytest.mark.parametrize("cls,proc,shape", [
    (DiffusionModule, VPSDE, (2,)),
    (DiffusionModule, functools.partial(BDM, sigma_blur_max=2.0), (1, 4, 4)),
    (CLDModule, CLD, (2,)),
])
def test_module_trains_and_samples_preconditioned(cls, proc, shape):
    m = cls(process=proc, backbone=Raw, data_shape=shape, precondition=True, sigma_data=0.5).double()
    x0 = 0.5 * torch.randn(16, *shape, dtype=F64)
    loss = m.loss(x0, torch.Generator().manual_seed(0))
    # a zero network: the loss is the unit-variance target's power, about 1 for data of scale sigma_data
    assert 0.3 < loss.item() < 3.0
    out = m.sample(range(3), GDDIM(nfe=5))
    assert out.samples.shape == (3, *shape) and torch.isfinite(out.samples).all()


def test_module_refuses_precondition_with_mixed_score_or_velocity_network():
    with pytest.raises(ValueError, match="precondition and model.mixed_score"):
        DiffusionModule(process=VPSDE, backbone=Raw, data_shape=(2,), precondition=True, mixed_score=True)
    with pytest.raises(ValueError, match="precondition needs the gDDIM training setting"):
        CLDModule(process=CLD, backbone=Raw, data_shape=(2,), precondition=True, score_matching="dsm")


def test_bad_sigma_data():
    with pytest.raises(ValueError, match="sigma_data"):
        Preconditioner(VPSDE((2,)), sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        Preconditioner(VPSDE((2,)), sigma_data=float("nan"))
