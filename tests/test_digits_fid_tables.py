"""The Markdown of benchmarks/digits_fid.py: what it says about the FID floor's sample size."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import digits_fid  # noqa: E402


def _results(data: str, floor_n: int) -> dict:
    row = {"sampler": "gDDIM q=2", "nfe": 20, "fid": 5.0, "kid": 0.01, f"fid_at_{floor_n}": 7.5,
           "fid_vs_heldout": 6.0, "nn_train_median": 2.0}
    return {"data": data, "num_samples": 1000, "floor_n": floor_n, "floor_val_vs_train": 2.5,
            "floor_kid": [0.03, 0.03], "floor_train_vs_heldout": 2.8, "nn_floor_heldout": 2.0,
            "runs": {"m": {"rows": [row], "timing": None}}}


def test_a_floor_from_fewer_digits_than_samples_is_flagged_and_the_small_sample_fid_tabulated():
    text = digits_fid.markdown(_results("digits", 297))
    assert text.startswith("Digits FID (1000 samples vs the 1500 training digits")
    assert "from only 297 digits, so biased high" in text
    assert "FID of the first 297 of the same samples" in text
    assert "| sampler | NFE | FID, 1000 samples | FID, first 297 |" in text
    assert "| gDDIM q=2 | 20 | 5.00 | 7.50 |" in text


def test_a_floor_from_as_many_digits_as_samples_is_not_called_biased():
    text = digits_fid.markdown(_results("mnist", 1000))
    assert text.startswith("MNIST FID (1000 samples vs the 4000 training digits")
    assert "from 1000 digits, as many as the samples" in text
    assert "biased high" not in text and "FID of the first" not in text
    assert "| gDDIM q=2 | 20 | 5.00 | 6.00 | 2.00 |" in text  # the held-out table stays


def test_the_nfe_to_match_table_uses_the_late_start_sampler_when_it_is_the_only_gddim_row():
    results = _results("mnist", 1000)
    row = results["runs"]["m"]["rows"][0]
    rows = [dict(row, sampler="gDDIM q=2 rho80", fid=26.0)]
    rows += [dict(row, sampler="Ancestral", nfe=n, fid=f) for n, f in ((20, 31.0), (50, 23.0))]
    results["runs"]["m"]["rows"] = rows
    text = digits_fid.markdown(results)
    assert "NFE each sampler needs to reach gDDIM q=2 rho80 at NFE 20 (FID 26.00)" in text
    # log-log interpolation between (20, 31) and (50, 23): exp(log 20 + w log 2.5), w = log(31/26)/log(31/23)
    assert "| Ancestral | 34 |" in text


def test_nfe_to_match_says_at_most_when_the_smallest_measured_nfe_already_matches():
    assert digits_fid.nfe_to_match({20: 16.3}, 17.8) == "≤20"  # one column: "needs 20" would be untrue
    assert digits_fid.nfe_to_match({10: 5.0, 20: 4.0}, 6.0) == "≤10"
    assert digits_fid.nfe_to_match({20: 31.0, 50: 23.0}, 26.0) == "34"  # interpolated, as before
    assert digits_fid.nfe_to_match({20: 31.0, 50: 27.0}, 26.0) == ">50"
    assert digits_fid.nfe_to_match({20: 31.0}, 26.0) == ">20"


def test_compile_wraps_the_sampling_network_and_is_recorded_in_every_row(tmp_path, monkeypatch):
    import json

    import torch

    compiled = []

    def fake_compile(module):  # torch.compile itself needs a C++ tool chain and a minute: not a unit test
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the config's relative paths
    out = tmp_path / "res"
    monkeypatch.setattr(sys, "argv", ["digits_fid.py", "--compile", "--threads", "1", "--no-timing",
                                      "--num-samples", "8", "--nfe", "4", "--samplers", "gDDIM q=2",
                                      "--run", "vp", "configs/vp.yaml", "pretrained/vp_digits.ckpt",
                                      "--out", str(out)])
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        digits_fid.main()  # sets the process's torch threads from --threads
    finally:
        torch.set_num_threads(threads)  # leave the next test the thread count it started with
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    rows = json.loads(out.with_suffix(".json").read_text())["runs"]["vp"]["rows"]
    assert [(r["sampler"], r["nfe"], r["compiled"]) for r in rows] == [("gDDIM q=2", 4, True)]
    assert "Sampled with `--compile`" in out.with_suffix(".md").read_text()


def _main_table(*overrides: dict) -> list[str]:
    """The main table's lines (header, separator, samplers) of a run with one row per ``overrides``
    (each a change of `_results`'s row)."""
    results = _results("mnist", 1000)
    row = results["runs"]["m"]["rows"][0]
    results["runs"]["m"]["rows"] = [dict(row, **o) for o in overrides]
    lines = digits_fid.markdown(results).split("\n")
    start = lines.index("### m") + 2
    return lines[start:lines.index("", start)]


def _cells(line: str) -> int:
    return line.strip().strip("|").count("|") + 1


def test_a_run_of_heun_alone_gets_its_column_and_a_well_formed_table():
    # Heun runs at NFE n + 1 and is shown in column n; its columns once came only from the other samplers,
    # so a run of Heun alone had a header of two cells over a separator of one and lost its value
    rows = _main_table(dict(sampler="Heun (PF)", nfe=101, fid=17.23, kid=0.67))
    assert rows[0] == "| sampler | NFE 100 |" and rows[1] == "|---|---|"
    assert rows[2] == "| Heun (PF) (NFE n+1) | 17.23 (670.00) |"
    assert {_cells(r) for r in rows} == {2}


def test_heun_at_an_nfe_no_other_sampler_ran_gets_its_own_column():
    rows = _main_table({}, dict(sampler="Heun (PF)", nfe=51, fid=18.2))
    assert rows[0] == "| sampler | NFE 20 | NFE 50 |"
    assert "| Heun (PF) (NFE n+1) |  | 18.20 (10.00) |" in rows
    assert {_cells(r) for r in rows} == {3}


def test_a_run_of_rk45_alone_gets_one_column():
    rows = _main_table(dict(sampler="RK45 tol 1e-5", nfe=195, fid=17.23, kid=0.67))
    assert rows[0] == "| sampler | adaptive |" and rows[1] == "|---|---|"
    assert rows[2] == "| RK45 tol 1e-5 (adaptive) | NFE 195: 17.23 (670.00) |"
