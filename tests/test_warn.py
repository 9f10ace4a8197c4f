"""Warnings name the user's line, not the package's internals."""

from __future__ import annotations

import warnings

import pytest
import torch

from gddim_lightning.samplers import GDDIM, PowerGrid
from gddim_lightning.sdes import VPSDE


def test_warnings_point_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GDDIM(order=3)  # deprecated alias
        GDDIM(20, grid=PowerGrid(1e-6)).times(VPSDE((2,)), 19)  # collapsed grid
    assert len(caught) == 2
    for w in caught:
        assert w.filename == __file__, (w.filename, str(w.message))


def test_parameterization_is_one_name_with_warning_aliases():
    """The R/L choice is `parameterization` everywhere; the old names (`K` on GDDIM, `kind` elsewhere) still
    work, warn at the user's line, and refuse to disagree with the new name."""
    from gddim_lightning.nets import Preconditioner
    from gddim_lightning.oracles import ring_mixture
    from gddim_lightning.samplers import GDDIM
    from gddim_lightning.sdes import CLD

    p = CLD((2,))
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    with pytest.warns(FutureWarning, match=r"GDDIM\(K=...\) is deprecated.*parameterization='L'") as rec:
        s = GDDIM(10, K="L")
    assert s.parameterization == "L" and rec[0].filename == __file__
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="parameterization='R' and the deprecated K='L'"):
        GDDIM(10, parameterization="R", K="L")
    with pytest.warns(FutureWarning, match="Preconditioner"):
        assert Preconditioner(p, kind="L").parameterization == "L"
    with pytest.warns(FutureWarning, match=r"LinearSDE.K\(kind=...\)"):
        assert torch.equal(p.K(t, kind="L"), p.L(t))
    z = torch.randn(2, *p.state_shape, dtype=torch.float64)
    with pytest.warns(FutureWarning, match="perturb"):
        assert torch.equal(p.perturb(torch.zeros(2, 2, dtype=torch.float64), t, z, kind="L"),
                           p.perturb(torch.zeros(2, 2, dtype=torch.float64), t, z, "L"))
    with pytest.warns(FutureWarning, match="eps_fn"):
        assert ring_mixture((2,)).eps_fn(p, kind="L").parameterization == "L"
