"""ResumableLoader: the same order on replay, exact continuation from a mid-epoch or end-of-epoch state,
disjoint rank shares under a (simulated) process group, and worker processes."""

from __future__ import annotations

import pytest
import torch

from gddim_lightning.data import loaders
from gddim_lightning.data.loaders import ResumableLoader

DS = torch.arange(23.0).unsqueeze(1)


def run(loader, epochs=1):
    return [[b.squeeze(1).tolist() for b in loader] for _ in range(epochs)]


def make(**kw):
    return ResumableLoader(DS, 4, seed=1, drop_last=True, **kw)


def test_orders_are_seeded_and_change_per_epoch():
    a, b = run(make(), 2), run(make(), 2)
    assert a == b and a[0] != a[1]
    flat = [x for batch in a[0] for x in batch]
    assert len(a[0]) == 5 and flat != sorted(flat)  # shuffled
    assert run(ResumableLoader(DS, 4, seed=2, drop_last=True)) != a[:1]


@pytest.mark.parametrize("cut", [0, 1, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_exactly(cut, workers):
    kw = {"num_workers": workers}
    straight = run(make(**kw), 3)
    first = make(**kw)
    run(first)  # epoch 0
    it = iter(first)
    head = [next(it).squeeze(1).tolist() for _ in range(cut)]
    state = first.state_dict()
    assert state["served"] == cut
    resumed = make(**kw)
    resumed.load_state_dict(state)
    rest = run(resumed, 2)
    assert head + rest[0] == straight[1]
    assert rest[1] == straight[2]


def test_resume_after_a_finished_epoch_starts_the_next():
    straight = run(make(), 2)
    first = make()
    run(first)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert run(resumed) == straight[1:]
    fresh = make()
    fresh.load_state_dict(make().state_dict())  # saved before any epoch: a fresh start
    assert run(fresh) == straight[:1]


def test_bad_state_is_refused():
    with pytest.raises(ValueError, match="ResumableLoader state"):
        make().load_state_dict({"served": 1})


def test_rank_shares_are_disjoint_and_equal(monkeypatch):
    shares = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(loaders, "_world", lambda r=rank: (3, r))
        loader = ResumableLoader(DS, 2, seed=5, drop_last=True)
        assert len(loader.sampler) == 7 and len(loader) == 3
        shares.append([x for batch in run(loader)[0] for x in batch])
    flat = [x for s in shares for x in s]
    assert len(flat) == len(set(flat)) == 18
