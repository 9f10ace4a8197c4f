"""Shared test settings."""

import atexit
import shutil
import tempfile

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches the constants it mines from local modules under <cwd>/.hypothesis; keep it in a
# temporary folder that goes away with the session, so a test run leaves nothing in the checkout.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="gddim-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: the tests use small tensors, and with 2 OpenMP threads on
    a 2-core machine shared with other jobs, spin-waiting makes tiny ops up to ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
