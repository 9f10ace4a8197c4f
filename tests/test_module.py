"""DiffusionModule / CLDModule: the loss, the mixed score and the eps conversions, checked with oracles
plugged in as the network (so a wiring mistake shows as a non-zero loss or a wrong sample)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gddim_lightning.module import CLDModule, DiffusionModule
from gddim_lightning.nets import MLP
from gddim_lightning.oracles import Gaussian, PointMass
from gddim_lightning.samplers import GDDIM, SSCS, EulerMaruyama
from gddim_lightning.sdes import BDM, CLD, VPSDE

PROCESSES = {
    "vp": (VPSDE, (2,)),
    "cld": (CLD, (2,)),
    "bdm": (functools.partial(BDM, sigma_blur_max=2.0), (1, 4, 4)),
}


class OracleNet(nn.Module):
    """A 'network' returning an oracle's eps (float64)."""

    def __init__(self, eps_fn):
        super().__init__()
        self.eps_fn = eps_fn
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, u, t):
        return self.eps_fn(u, t) + 0 * self.dummy


class ZeroNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, u, t):
        return torch.zeros_like(u) + 0 * self.dummy


def make(name: str, parameterization: str = "R", mixed_score: bool = False, cls=DiffusionModule, **kw):
    proc, shape = PROCESSES[name]
    m = cls(process=proc, backbone=ZeroNet, data_shape=shape, parameterization=parameterization,
            mixed_score=mixed_score, **kw)
    return m.double()


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("param", ["R", "L"])
def test_point_mass_oracle_has_zero_loss(name, param):
    """u_t = Psi x0 + K z and the point-mass eps K^{-1}(u - Psi x0) must give back z exactly."""
    m = make(name, param)
    x0 = torch.linspace(-1, 1, torch.Size(m.data_shape).numel(), dtype=torch.float64).reshape(m.data_shape)
    m.net = OracleNet(PointMass(x0).eps_fn(m.process, param))
    batch = x0.expand(16, *m.data_shape).clone()
    loss = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-18


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("param", ["R", "L"])
def test_mixed_score_is_the_standard_normal_eps(name, param):
    """With a zero network, the mixed-score output equals the oracle eps of N(0, I) data."""
    m = make(name, param, mixed_score=True)
    oracle = Gaussian(torch.zeros(m.data_shape, dtype=torch.float64), 1.0).eps_fn(m.process, param)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(5, *m.process.state_shape, generator=g, dtype=torch.float64)
    for t in (0.01, 0.3, 0.9):
        tt = torch.full((5,), t, dtype=torch.float64)
        torch.testing.assert_close(m.predict_eps(u, tt), oracle(u, tt), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["cld", "vp"])
def test_L_trained_network_samples_like_R(name):
    """An L-parameterised net is converted to R for sampling: same samples as the R oracle."""
    mR, mL = make(name, "R"), make(name, "L")
    x0 = torch.tensor([0.3, -0.7], dtype=torch.float64)
    mR.net = OracleNet(PointMass(x0).eps_fn(mR.process, "R"))
    mL.net = OracleNet(PointMass(x0).eps_fn(mL.process, "L"))
    sampler = GDDIM(nfe=6, q=1, denoise="none")
    a = mR.sample(range(4), sampler, use_ema=False)
    b = mL.sample(range(4), sampler, use_ema=False)
    torch.testing.assert_close(a.state, b.state, rtol=1e-9, atol=1e-9)


def test_training_reduces_loss_on_toy_data():
    torch.manual_seed(0)
    m = DiffusionModule(process=VPSDE, backbone=functools.partial(MLP, hidden=64, depth=2), data_shape=(2,),
                        lr=1e-2)
    opt = m.configure_optimizers()
    x = torch.randn(512, 2) * 0.1 + torch.tensor([1.0, -1.0])
    g = torch.Generator().manual_seed(0)
    first = m.loss(x, generator=g).item()
    for _ in range(60):
        opt.zero_grad()
        m.loss(x).backward()
        opt.step()
    last = m.loss(x, generator=torch.Generator().manual_seed(0)).item()
    assert last < 0.7 * first


def test_ema_tracks_and_is_used_for_sampling():
    m = DiffusionModule(process=VPSDE, backbone=functools.partial(MLP, hidden=16, depth=1), data_shape=(2,),
                        ema_decay=0.5)
    m.ema.update()  # the first update copies the online weights
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    m.ema.update()  # then EMA = 0.5 old + 0.5 new != online
    keys = m.state_dict().keys()
    assert any(k.startswith("ema.ema_model.") for k in keys)
    assert not any(k.startswith("ema.online_model") for k in keys)
    u, t = torch.randn(3, 2), torch.full((3,), 0.5)
    assert not torch.allclose(m.predict_eps(u, t, use_ema=True), m.predict_eps(u, t, use_ema=False))


def test_cld_module_options_give_finite_losses():
    for sm in ("hsm", "dsm"):
        for on in ("both", "velocity"):
            m = make("cld", "L", cls=CLDModule, score_matching=sm, loss_on=on)
            x = torch.randn(8, 2, dtype=torch.float64)
            assert torch.isfinite(m.loss(x, generator=torch.Generator().manual_seed(0)))


def test_cld_dsm_target_averages_to_hsm_eps():
    """Denoising identity: E[DSM target | u] = HSM eps. With a point mass and fixed t, the DSM target
    is affine in the Gaussian (v0, z); regressing it on u over many draws recovers the HSM oracle."""
    m = make("cld", "R", cls=CLDModule, score_matching="dsm")
    x0 = torch.tensor([0.5, -0.2], dtype=torch.float64)
    captured = {}

    def spy(u, t):
        captured["u"], captured["t"] = u, t
        return torch.zeros_like(u)

    m.net = OracleNet(spy)
    m.reduce_loss = lambda eps, target: captured.setdefault("target", target).sum() * 0
    n = 8000
    g = torch.Generator().manual_seed(0)
    m.sample_t = lambda size, generator=None: torch.full((size,), 0.3, dtype=torch.float64)
    m.loss(x0.expand(n, 2).clone(), generator=g)
    u, target = captured["u"], captured["target"]
    hsm = PointMass(x0).eps_fn(m.process, "R")(u, captured["t"])
    # least-squares regression of target on [u, 1]: the fitted values must match the HSM eps
    X = torch.cat([u, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(X, target).solution
    torch.testing.assert_close(X @ coef, hsm, atol=2e-2, rtol=0)


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="parameterization"):
        make("vp", "Q")
    with pytest.raises(ValueError, match="t_eps"):
        make("vp", t_eps=2.0)
    with pytest.raises(ValueError, match="backbone"):
        DiffusionModule(process=CLD, backbone=lambda c: MLP(c + 1, c), data_shape=(2,))
    with pytest.raises(TypeError, match="CLD"):
        make("vp", cls=CLDModule)
    m = make("vp")
    with pytest.raises(ValueError, match="data_shape"):
        m.loss(torch.zeros(4, 3, dtype=torch.float64))


class VelocityNet(nn.Module):
    """The v part of an oracle's L-parameterised eps, shaped like the data (a CLD-paper network)."""

    def __init__(self, eps_fn, data_shape):
        super().__init__()
        self.eps_fn, self.data_shape = eps_fn, tuple(data_shape)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, u, t):
        flat = self.eps_fn(u, t).reshape(u.shape[0], -1)
        return flat[:, flat.shape[1] // 2 :].reshape(u.shape[0], *self.data_shape) + 0 * self.dummy


def velocity_module(shape=(2,), **kw):
    kw = {"sampler": GDDIM(nfe=6, q=1, parameterization="L", denoise="none"), "parameterization": "L",
          "network_output": "velocity", **kw}
    return CLDModule(process=CLD, backbone=lambda c_in, out_channels: VelocityNet(lambda u, t: torch.zeros_like(u), (out_channels, *shape[1:])),
                     data_shape=shape, **kw).double()


@pytest.mark.parametrize("shape", [(2,), (1, 2, 3)])
@pytest.mark.parametrize("mixed", [False, True])
def test_velocity_only_network_trains_and_samples_like_the_full_one(shape, mixed):
    """A velocity-only network holding the v part of the point-mass eps_L has zero HSM loss, and drives the
    drift-only samplers to the same samples as the full L oracle."""
    m = velocity_module(shape, mixed_score=mixed)
    assert m.output_shape == shape
    x0 = torch.linspace(-1, 1, torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
    oracle = PointMass(x0).eps_fn(m.process, "L")
    net = VelocityNet(oracle, shape)
    if mixed:  # the network learns the residual to the Gaussian eps
        gauss = Gaussian(torch.zeros(shape, dtype=torch.float64), 1.0).eps_fn(m.process, "L")
        net = VelocityNet(lambda u, t: oracle(u, t) - gauss(u, t), shape)
    m.net = net
    loss = m.loss(x0.expand(16, *shape).clone(), generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-18
    full = CLDModule(process=CLD, backbone=ZeroNet, data_shape=shape, parameterization="L").double()
    full.net = OracleNet(oracle)
    for sampler in (GDDIM(nfe=6, q=1, parameterization="L", denoise="none"), SSCS(nfe=6)):
        a = m.sample(range(3), sampler, use_ema=False)
        b = full.sample(range(3), sampler, use_ema=False)
        torch.testing.assert_close(a.state, b.state, rtol=1e-8, atol=1e-8)


def test_velocity_only_network_refuses_what_needs_the_position_score():
    with pytest.raises(ValueError, match="parameterization='L'"):
        velocity_module(parameterization="R")
    with pytest.raises(ValueError, match="loss_on='both'"):
        velocity_module(loss_on="both")
    with pytest.raises(ValueError, match="network_output"):
        velocity_module(network_output="x")
    with pytest.raises(ValueError, match="model.sampler GDDIM uses the position score"):
        velocity_module(sampler=GDDIM(nfe=6))  # K='R'
    m = velocity_module()
    for bad in (GDDIM(nfe=6, parameterization="L"), GDDIM(nfe=6, lambda_=1.0, q=0), EulerMaruyama(6, denoise="tweedie")):
        with pytest.raises(ValueError, match="parameterization='L', SSCS"):
            m.sample(range(2), bad)
    with pytest.raises(ValueError, match="takes none of the keywords"):
        CLDModule(process=CLD, backbone=lambda c: MLP(c), data_shape=(2,), parameterization="L",
                  network_output="velocity", sampler=SSCS(6))
    m = CLDModule(process=CLD, backbone=functools.partial(MLP, hidden=8), data_shape=(3,), parameterization="L",
                  network_output="velocity", sampler=SSCS(6))
    assert (m.net.in_dim, m.net.out_dim) == (6, 3)


def test_loading_a_checkpoint_of_other_settings_is_refused():
    """Same weights' names, other meaning: a precondition=True checkpoint into a mixed-score model."""
    src = make("vp", precondition=True)
    dst = make("vp", mixed_score=True)
    ckpt = {"state_dict": src.state_dict(), "hyper_parameters": dict(src.hparams)}
    with pytest.raises(ValueError, match="precondition: checkpoint True, model False"):
        dst.on_load_checkpoint(ckpt)
    make("vp", precondition=True).on_load_checkpoint(ckpt)  # the same settings load
