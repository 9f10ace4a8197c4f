"""Regenerate the figures of the documentation (no training: exact scores from the oracles).

    python docs/scripts/make_figures.py            # writes docs/assets/*.png

`cld-ring-nfe10.png`: a Gaussian mixture of 8 components on a ring (``ring_mixture``), exact
samples against samplers driven by its exact eps under CLD, every sampler at 10 network
evaluations. The sliced Wasserstein distance to an independent exact sample is in each title.
Deterministic: fixed seeds throughout. Needs matplotlib (in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gddim_lightning.evaluation import sliced_wasserstein  # noqa: E402
from gddim_lightning.oracles import ring_mixture  # noqa: E402
from gddim_lightning.samplers import GDDIM, EulerMaruyama, SampleNoise  # noqa: E402
from gddim_lightning.sdes import CLD  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LIM = 3.5


def cld_ring_figure(out: Path, n: int = 2000, nfe: int = 10) -> list[tuple[str, float]]:
    process = CLD(data_shape=(2,))
    mixture = ring_mixture((2,))
    eps_fn = mixture.eps_fn(process)
    exact = mixture.sample(n, torch.Generator().manual_seed(1))
    reference = mixture.sample(n, torch.Generator().manual_seed(2))
    noise = SampleNoise(range(n), dtype=torch.float64)
    panels = [("exact samples", exact)]
    for name, sampler in [
        (f"gDDIM (R, q = 1), NFE {nfe}", GDDIM(nfe=nfe, q=1)),
        (f"gDDIM with Cholesky L, NFE {nfe}", GDDIM(nfe=nfe, q=1, parameterization="L")),
        (f"Euler-Maruyama, NFE {nfe}", EulerMaruyama(nfe=nfe)),
    ]:
        res = sampler.sample(process, eps_fn, noise)
        assert res.nfe == nfe, (name, res.nfe)
        panels.append((name, res.samples))

    fig, axes = plt.subplots(2, 2, figsize=(7.0, 7.4), dpi=100, layout="constrained")
    rows = []
    for ax, (name, x) in zip(axes.flat, panels):
        x = x.double()
        swd = sliced_wasserstein(x, reference)
        inside = ((x.abs() <= LIM).all(1)).float().mean().item()
        rows.append((name, swd))
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", linewidths=0)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", linewidths=0)
        ax.set_xlim(-LIM, LIM)
        ax.set_ylim(-LIM, LIM)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        note = f"SWD {swd:.3g}" + ("" if inside > 0.999 else f", {100 * inside:.0f}% of samples in frame")
        ax.set_title(f"{name}\n{note}", fontsize=9)
    fig.suptitle("CLD, 8-component Gaussian mixture, exact eps\n(grey: an independent exact sample)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args()
    out = args.out_dir / "cld-ring-nfe10.png"
    for name, swd in cld_ring_figure(out):
        print(f"{name:40s} SWD {swd:.4g}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
