"""Warnings name the user's line, not the package's internals."""

from __future__ import annotations

import warnings

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
