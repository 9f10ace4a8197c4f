"""Property-based tests (hypothesis): coefficient plans and samplers stay finite near ``t -> 0`` and
``t -> T``, for every process, multistep order and ``K``, in float32 and float64, for 1 to 1000 steps, over
random grids (built-in kinds and random explicit times) and random sampler settings.

Every run is reproducible (``derandomize=True``, no example database): the examples are a fixed function of
the test source (and of the package modules loaded, from which Hypothesis mixes in literals). The processes
are built once at module level (their float64 solves are shared); plans are keyed by the exact grid, so
random grids still build fresh plans.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gddim_lightning.oracles import PointMass, ring_mixture
from gddim_lightning.samplers import (
    GDDIM,
    RK45,
    SSCS,
    Ancestral,
    EulerMaruyama,
    ExplicitGrid,
    Heun,
    LogSNRGrid,
    PowerGrid,
    ProbabilityFlowEuler,
    QuadraticGrid,
    SampleNoise,
    UniformGrid,
    deterministic_plan,
    drift_plan,
    stochastic_plan,
)
from gddim_lightning.samplers.plan import Plan
from gddim_lightning.sdes import BDM, CLD, VPSDE

F32, F64 = torch.float32, torch.float64
T = 1.0
FLOAT32_MAX = torch.finfo(F32).max


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- processes (built once)
PLAN_PROCESSES = {
    "vp_linear": VPSDE((2,)),
    "vp_cosine": VPSDE((2,), schedule="cosine"),
    "vp_cosine_logsnr": VPSDE((2,), schedule="cosine_logsnr"),
    "cld": CLD((2,)),
    "cld_noncritical": CLD((2,), Gamma=0.5, beta_slope=2.0),  # numeric Sigma = R R^T path
    "bdm": BDM((1, 3, 4)),
}
SAMPLER_PROCESSES = {
    "vp_linear": VPSDE((2,)),
    "vp_cosine": VPSDE((2,), schedule="cosine"),
    "vp_cosine_logsnr": VPSDE((2,), schedule="cosine_logsnr"),
    "cld": CLD((2,)),
    "bdm": BDM((1, 2, 3)),
}


def _oracles(p):
    x0 = torch.linspace(-0.9, 0.8, math.prod(p.data_shape), dtype=F64).reshape(p.data_shape)
    return {"ring": ring_mixture(p.data_shape, k=3, seed=3).eps_fn(p), "point": PointMass(x0).eps_fn(p)}


ORACLES = {name: _oracles(p) for name, p in SAMPLER_PROCESSES.items()}


# --------------------------------------------------------------------------- strategies
#: t_min log-uniform in [1e-5, 1e-1], with both ends as explicit choices
t_mins = st.one_of(st.sampled_from([1e-5, 1e-1]), st.floats(-5.0, -1.0).map(lambda e: 10.0**e))

#: every built-in grid kind (power grids with a random exponent)
grid_kinds = st.one_of(
    st.sampled_from([UniformGrid(), QuadraticGrid(), LogSNRGrid()]),
    st.floats(0.25, 4.0).map(PowerGrid),
)


@st.composite
def explicit_times(draw, max_steps: int = 1000) -> list[float]:
    """Strictly decreasing random times from ``T`` to ``t_min`` with ``1..max_steps`` steps: a random bulk
    (uniform and log-uniform in ``(t_min, T)``, from a drawn seed to keep the example small) plus up to two
    times within ``10^-15.5 .. 10^-1`` (relative) of ``T`` and up to two within ``10^-12 .. 10^-1`` of
    ``t_min``. At most two such near-coincident times per end, so the grid stays usable by order-4
    multistep (three gaps of ~1e-16 under one large step make coefficients beyond float32; see
    `test_ill_conditioned_grids_raise_clearly_in_float32`)."""
    t_min = draw(t_mins)
    n_bulk = draw(st.integers(0, max_steps - 5))
    log_share = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    near_T = draw(st.lists(st.floats(-15.5, -1.0), max_size=2))
    near_min = draw(st.lists(st.floats(-12.0, -1.0), max_size=2))
    rng = np.random.default_rng(seed)
    n_log = round(log_share * n_bulk)
    bulk = np.concatenate([
        rng.uniform(t_min, T, n_bulk - n_log),
        np.exp(rng.uniform(math.log(t_min), math.log(T), n_log)),
    ])
    extra = [T * (1 - 10.0**e) for e in near_T] + [t_min * (1 + 10.0**e) for e in near_min]
    pts = np.concatenate([bulk, np.array(extra, dtype=np.float64)])
    inner = np.unique(pts[(pts > t_min) & (pts < T)])[::-1]
    return [T, *inner.tolist(), t_min]


# --------------------------------------------------------------------------- checks
def assert_plan_finite(plan: Plan, what: str) -> None:
    """Every float64 coefficient is finite, and so is every converted copy (float32 and float64).

    `Plan.get` raises ValueError where a float64 coefficient lies beyond the dtype's range; here that is a
    failure too (the grids these tests draw are well-conditioned)."""
    for name, c in plan.coeffs.items():
        assert c.dtype == F64, (what, name, c.dtype)
        bad = (~torch.isfinite(c)).sum().item()
        assert bad == 0, f"{what}: {bad} non-finite float64 entries in {name!r}"
        for dtype in (F32, F64):
            g = plan.get(name, dtype, "cpu").data
            assert g.dtype == dtype
            bad = (~torch.isfinite(g)).sum().item()
            assert bad == 0, f"{what}: {bad} non-finite {dtype} entries in {name!r} (max |.| {c.abs().max():.3g})"


def check_deterministic_plans(p, times: torch.Tensor, what: str) -> None:
    for order in (1, 2, 3, 4):
        for K in ("R", "L"):  # L: the Cholesky ablation (equal to R on the scalar processes)
            plan = deterministic_plan(p, times, order, K)
            assert plan.coeffs["C"].shape[:2] == (times.numel() - 1, order)
            assert_plan_finite(plan, f"{what} order={order} K={K}")


def check_stochastic_plan(p, times: torch.Tensor, lam: float, what: str) -> None:
    plan = stochastic_plan(p, times, lam)
    assert_plan_finite(plan, f"{what} lambda={lam}")
    P, noise = plan.coeffs["P"], plan.coeffs["noise"]
    scale = torch.linalg.matrix_norm(p.Sigma(times[1:]), ord=2)  # [N, n]: |Sigma_{t'}| per block
    assert scale.shape == P.shape[:-2] and (scale > 0).all()
    # the step covariance is symmetric positive semi-definite up to round-off (measured <= 4e-11 relative)
    assert ((P - P.mT).abs().amax((-1, -2)) <= 1e-8 * scale).all(), what
    eig = torch.linalg.eigvalsh(0.5 * (P + P.mT))  # [N, n, b]
    assert (eig >= -1e-8 * scale[..., None]).all(), (what, (eig / scale[..., None]).min().item())
    # its square root reproduces it, and the last step adds no noise
    fit = (noise[:-1] @ noise[:-1].mT - P[:-1]).abs().amax((-1, -2))
    assert (fit <= 1e-8 * scale[:-1]).all(), (what, fit.max().item() if fit.numel() else 0.0)
    assert (noise[-1] == 0).all()
    assert_plan_finite(drift_plan(p, times, lam), f"{what} drift lambda={lam}")


# --------------------------------------------------------------------------- 1. plans
@pytest.mark.parametrize("pname", list(PLAN_PROCESSES))
@_settings(5)
@given(grid=grid_kinds, steps=st.integers(1, 1000), t_min=t_mins)
@example(grid=UniformGrid(), steps=1, t_min=1e-5)
@example(grid=QuadraticGrid(), steps=1000, t_min=1e-5)
@example(grid=LogSNRGrid(), steps=1000, t_min=1e-1)
@example(grid=PowerGrid(0.25), steps=1000, t_min=1e-5)
def test_deterministic_plans_finite_on_builtin_grids(pname, grid, steps, t_min):
    p = PLAN_PROCESSES[pname]
    times = grid(p, steps, t_min)
    assert times.numel() == steps + 1 and times[0].item() == T and (times[1:] < times[:-1]).all()
    check_deterministic_plans(p, times, f"{pname} {grid} steps={steps} t_min={t_min:.3g}")


@pytest.mark.parametrize("pname", list(PLAN_PROCESSES))
@_settings(6)
@given(times=explicit_times())
@example(times=[T, 1e-5])
@example(times=[T, T - 1e-15, T - 1e-12, 0.5, 1e-5 * (1 + 1e-12), 1e-5])
@example(times=[T, T - 2**-53, T - 2**-52, 0.3, 1e-5 * (1 + 2e-16 * 8), 1e-5 * (1 + 2e-16 * 4), 1e-5])
def test_deterministic_plans_finite_on_random_explicit_grids(pname, times):
    p = PLAN_PROCESSES[pname]
    assert 1 <= len(times) - 1 <= 1000
    check_deterministic_plans(p, ExplicitGrid(times)(p), f"{pname} explicit grid {times[:4]}... ({len(times)} times)")


@pytest.mark.parametrize("pname", list(PLAN_PROCESSES))
@_settings(5)
@given(
    grid=st.one_of(st.tuples(grid_kinds, st.integers(1, 1000), t_mins), explicit_times()),
    lam=st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 2.0)),
)
@example(grid=(UniformGrid(), 1000, 1e-5), lam=2.0)
@example(grid=(QuadraticGrid(), 1, 1e-5), lam=0.0)
@example(grid=[T, T - 1e-15, 0.5, 1e-5 * (1 + 1e-12), 1e-5], lam=1.0)
def test_stochastic_and_drift_plans_finite_and_psd(pname, grid, lam):
    p = PLAN_PROCESSES[pname]
    times = ExplicitGrid(grid)(p) if isinstance(grid, list) else grid[0](p, grid[1], grid[2])
    check_stochastic_plan(p, times, lam, f"{pname} grid={grid if isinstance(grid, tuple) else grid[:4]}")


@pytest.mark.parametrize("pname", list(PLAN_PROCESSES))
@_settings(6)
@given(
    center=st.floats(-4.9, -0.05),  # log10 of the cluster's place in (t_min, T)
    gap=st.floats(-16.0, -5.0),  # log10 of the relative spacing inside the cluster
    size=st.integers(3, 6),
    order=st.integers(1, 4),
)
def test_ill_conditioned_grids_raise_clearly_in_float32(pname, center, gap, size, order):
    """A cluster of nearly coincident times followed by large steps: multistep coefficients grow like
    ``(h / gap)^(order - 1)``. They stay finite in float64; in float32 they are either finite or refused by
    `Plan.get` with a ValueError (never a silent inf), and orders 1-2 are always finite in float32."""
    p = PLAN_PROCESSES[pname]
    c = 10.0**center
    cluster = [c * (1 + k * 10.0**gap) for k in range(size)]
    times = torch.tensor(sorted({T, *cluster, 1e-5}, reverse=True), dtype=F64)
    for K in ("R", "L"):
        plan = deterministic_plan(p, times, order, K)
        for name, coef in plan.coeffs.items():
            assert torch.isfinite(coef).all(), (name, order, K)
            big = coef.abs().max().item()
            if big <= FLOAT32_MAX:
                assert torch.isfinite(plan.get(name, F32, "cpu").data).all()
            else:
                assert order >= 3, (name, order, K, big)
                with pytest.raises(ValueError, match="ill-conditioned"):
                    plan.get(name, F32, "cpu")
            assert torch.isfinite(plan.get(name, F64, "cpu").data).all()


def test_ill_conditioned_grid_sampler_raises_value_error_not_nan():
    """The end-to-end consequence of the refusal: an order-4 float32 sampler on three ~1e-16 gaps fails with a
    ValueError naming the grid (it used to return inf/NaN), while order 1 (no extrapolation) runs finite."""
    p = SAMPLER_PROCESSES["vp_linear"]
    times = [T, T - 2**-53, T - 2**-52, T - 3 * 2**-53, 1e-5]
    eps = ORACLES["vp_linear"]["ring"]
    with pytest.raises(ValueError, match="ill-conditioned"):
        GDDIM(5, q=3, grid=ExplicitGrid(times), t_min=1e-5).sample(p, eps, SampleNoise([0, 1], dtype=F32))
    r = GDDIM(5, q=0, grid=ExplicitGrid(times), t_min=1e-5).sample(p, eps, SampleNoise([0, 1], dtype=F32))
    assert torch.isfinite(r.state).all()


def test_finiteness_checks_can_fail():
    """The checks above are not vacuous: an inf or NaN in a coefficient is caught, and a float64 value beyond
    float32 is refused by `Plan.get` instead of becoming inf."""
    p = PLAN_PROCESSES["vp_linear"]
    times = UniformGrid()(p, 5, 1e-3)
    good = deterministic_plan(p, times, 2)
    for bad_value in (float("inf"), float("nan")):
        C = good.coeffs["C"].clone()
        C[3, 1] = bad_value
        with pytest.raises((AssertionError, FloatingPointError)):
            assert_plan_finite(Plan(p, times, {"psi": good.coeffs["psi"], "C": C}), "injected")
        with pytest.raises(FloatingPointError, match="NaN or inf even in float64"):
            Plan(p, times, {"C": C}).get("C", F32, "cpu")
    C = good.coeffs["C"].clone()
    C[0, 0] = 1e40
    plan = Plan(p, times, {"C": C})
    assert torch.isfinite(plan.get("C", F64, "cpu").data).all()
    with pytest.raises(ValueError, match="ill-conditioned"):
        plan.get("C", F32, "cpu")
    with pytest.raises(ValueError, match="ill-conditioned"):
        assert_plan_finite(plan, "injected")


# --------------------------------------------------------------------------- 2. samplers end to end
SAMPLER_KINDS = ["gddim", "gddim_L", "gddim_stochastic", "euler_maruyama", "pf_euler", "heun", "sscs", "ancestral"]
VALID_PROCESSES = {
    "sscs": ["cld"],
    "ancestral": ["vp_linear", "vp_cosine", "vp_cosine_logsnr", "bdm"],
}


def make_sampler(kind: str, steps: int, grid, t_min: float, denoise: str, order: int, lam: float):
    """A sampler taking ``steps`` grid steps (its nfe is derived: one or two evaluations per step plus the
    denoising evaluation)."""
    dn = 0 if denoise == "none" else 1
    kw = {"grid": grid, "t_min": t_min, "denoise": denoise}
    if kind == "gddim":
        return GDDIM(steps + dn, q=order - 1, **kw)
    if kind == "gddim_L":
        return GDDIM(steps + dn, q=order - 1, parameterization="L", **kw)
    if kind == "gddim_stochastic":
        return GDDIM(steps + dn, q=0, lambda_=lam, **kw)
    if kind == "euler_maruyama":
        return EulerMaruyama(steps + dn, lambda_=lam, **kw)
    if kind == "pf_euler":
        return ProbabilityFlowEuler(steps + dn, **kw)
    if kind == "heun":
        return Heun(2 * steps + dn, **kw)
    if kind == "sscs":
        return SSCS(steps + dn, **kw)
    if kind == "ancestral":
        return Ancestral(steps + dn, **kw)
    raise AssertionError(kind)


def run_and_check(p, pname, sampler, oracle: str, dtype, seeds) -> None:
    r = sampler.sample(p, ORACLES[pname][oracle], SampleNoise(seeds, dtype=dtype))
    what = f"{pname} {sampler} oracle={oracle} dtype={dtype}"
    assert r.state.dtype == dtype and r.state.shape == (len(seeds), *p.state_shape), what
    assert r.samples.shape == (len(seeds), *p.data_shape), what
    assert torch.isfinite(r.state).all(), what
    if hasattr(sampler, "nfe"):
        assert r.nfe == sampler.nfe, what


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
@_settings(8)
@given(data=st.data())
def test_samplers_finite_on_random_settings(kind, data):
    pname = data.draw(st.sampled_from(VALID_PROCESSES.get(kind, list(SAMPLER_PROCESSES))), label="process")
    p = SAMPLER_PROCESSES[pname]
    explicit = data.draw(st.booleans(), label="explicit grid")
    if explicit:
        times = data.draw(explicit_times(max_steps=200), label="times")
        grid, steps, t_min = ExplicitGrid(times), len(times) - 1, times[-1]
    else:
        grid = data.draw(grid_kinds, label="grid")
        steps = data.draw(st.one_of(st.integers(1, 8), st.integers(1, 200)), label="steps")
        t_min = data.draw(t_mins, label="t_min")
    sampler = make_sampler(
        kind, steps, grid, t_min,
        denoise=data.draw(st.sampled_from(["tweedie", "euler", "none"]), label="denoise"),
        order=data.draw(st.integers(1, 4), label="order"),
        lam=data.draw(st.floats(0.0, 2.0, exclude_min=kind == "gddim_stochastic"), label="lambda"),
    )
    run_and_check(
        p, pname, sampler,
        oracle=data.draw(st.sampled_from(["ring", "point"]), label="oracle"),
        dtype=data.draw(st.sampled_from([F32, F64]), label="dtype"),
        seeds=data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=4), label="seeds"),
    )


EDGE_GRIDS = {
    # first step from T straight to t_min = 1e-5
    "one_step": (UniformGrid(), 1, 1e-5),
    # the largest t_min, few steps
    "t_min_0.1": (QuadraticGrid(), 3, 1e-1),
    # tiny first step off T, then a long one, and a tiny last step onto t_min = 1e-5
    "near_T_and_t_min": ([T, T - 1e-12, 0.5, 1e-3, 1e-5 * (1 + 1e-9), 1e-5], None, None),
    "near_T_ulps": ([T, T - 2**-53, T - 2**-51, 0.2, 1e-5], None, None),
}


@pytest.mark.parametrize("edge", list(EDGE_GRIDS))
@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_samplers_finite_at_the_ends(kind, edge):
    """Every sampler, every process it applies to, float32 and float64, order 4 for gDDIM: the grids that go
    straight from T to 1e-5, or step within 1e-12 (and within an ulp) of T and of t_min."""
    grid, steps, t_min = EDGE_GRIDS[edge]
    if isinstance(grid, list):
        grid, steps, t_min = ExplicitGrid(grid), len(grid) - 1, grid[-1]
    for pname in VALID_PROCESSES.get(kind, list(SAMPLER_PROCESSES)):
        p = SAMPLER_PROCESSES[pname]
        for dtype in (F32, F64):
            sampler = make_sampler(kind, steps, grid, t_min, "tweedie", order=4, lam=2.0)
            run_and_check(p, pname, sampler, "ring", dtype, [0, 1])


@_settings(3)
@given(
    pname=st.sampled_from(list(SAMPLER_PROCESSES)),
    tol=st.floats(-4.0, -1.0).map(lambda e: 10.0**e),
    t_min=t_mins,
    dtype=st.sampled_from([F32, F64]),
)
@example(pname="bdm", tol=1e-4, t_min=1e-5, dtype=F32)
def test_rk45_finite_on_random_settings(pname, tol, t_min, dtype):
    p = SAMPLER_PROCESSES[pname]
    run_and_check(p, pname, RK45(rtol=tol, atol=tol, t_min=t_min), "ring", dtype, [0, 1])


def _expected_valid(kind, pname, nfe, order, lam, K, t_min, denoise) -> bool:
    dn = 0 if denoise == "none" else 1
    ok = denoise in ("tweedie", "euler", "none") and 0 < t_min < T
    if kind == "gddim":
        return ok and 1 <= order <= 4 and nfe >= 1 + dn and lam >= 0 and K in ("R", "L") and (
            lam == 0 or (order == 1 and K == "R"))
    if kind == "euler_maruyama":
        return ok and nfe >= 1 + dn and lam >= 0
    if kind == "heun":
        return ok and nfe >= 2 + dn and (nfe - dn) % 2 == 0
    if kind == "sscs":
        return ok and nfe >= 1 + dn and pname == "cld"
    return ok and nfe >= 1 + dn and pname != "cld"  # ancestral: scalar-block processes


@_settings(30)
@given(
    kind=st.sampled_from(["gddim", "euler_maruyama", "heun", "sscs", "ancestral"]),
    pname=st.sampled_from(list(SAMPLER_PROCESSES)),
    # each knob: mostly in range, sometimes anywhere (edges and garbage included)
    nfe=st.one_of(st.integers(4, 12), st.integers(-2, 12)),
    order=st.one_of(st.integers(1, 4), st.integers(-1, 6)),
    lam=st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.sampled_from([-0.0, float("nan")]), st.floats(-1.0, 3.0)),
    K=st.sampled_from(["R", "L", "X"]),
    t_min=st.one_of(t_mins, st.sampled_from([0.0, -1e-3, 1.0, 1.5]), st.floats(1e-7, 1.2)),
    denoise=st.one_of(st.sampled_from(["tweedie", "euler", "none"]), st.just("bogus")),
    dtype=st.sampled_from([F32, F64]),
)
def test_any_setting_runs_finite_or_raises_value_error(kind, pname, nfe, order, lam, K, t_min, denoise, dtype):
    """Over the whole settings space, valid ones included: a valid setting samples finite values, an invalid
    one raises ValueError (at construction or at ``sample``), never another exception or a NaN."""
    p = SAMPLER_PROCESSES[pname]
    kw = {"t_min": t_min, "denoise": denoise}
    build = {
        "gddim": lambda: GDDIM(nfe, q=order - 1, lambda_=lam, parameterization=K, **kw),
        "euler_maruyama": lambda: EulerMaruyama(nfe, lambda_=lam, **kw),
        "heun": lambda: Heun(nfe, **kw),
        "sscs": lambda: SSCS(nfe, **kw),
        "ancestral": lambda: Ancestral(nfe, **kw),
    }[kind]
    valid = _expected_valid(kind, pname, nfe, order, lam, K, t_min, denoise)
    event("valid setting" if valid else "invalid setting")
    if valid:
        run_and_check(p, pname, build(), "ring", dtype, [0, 1])
    else:
        with pytest.raises(ValueError):
            build().sample(p, ORACLES[pname]["ring"], SampleNoise([0, 1], dtype=dtype))


# --------------------------------------------------------------------------- 3. NFE 1000, every process
NFE_1000 = {
    "vp_linear": lambda: EulerMaruyama(1000, lambda_=1.0, t_min=1e-5),
    "vp_cosine": lambda: GDDIM(1000, q=3, t_min=1e-5, grid=UniformGrid()),
    "vp_cosine_logsnr": lambda: Ancestral(1000, t_min=1e-5),
    "cld": lambda: GDDIM(1000, q=3, t_min=1e-5),
    "bdm": lambda: GDDIM(1000, q=0, lambda_=1.5, t_min=1e-5, grid=LogSNRGrid()),
}


@pytest.mark.parametrize("pname", list(SAMPLER_PROCESSES))
def test_nfe_1000_every_process(pname):
    """The 1000 end of the step range, once per process, in float32, down to t_min = 1e-5 (the plans of every
    order at 1000 steps are covered above): the reverse SDE, order-4 gDDIM, ancestral, stochastic gDDIM."""
    p = SAMPLER_PROCESSES[pname]
    run_and_check(p, pname, NFE_1000[pname](), "ring", F32, [0, 1])
