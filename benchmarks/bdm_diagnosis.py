"""Why does deterministic sampling of a trained BDM model fall behind its stochastic samplers? Experiments.

On a trained digits model (any process; BDM is the question), 1000 samples each, digits FID and KID:

* ``start``: deterministic gDDIM (2 nodes) at NFE 20 and 50 from ``T``, from the official start
  ``rho = 80`` and from ``rho = 20``; the official BDM sampler (one node, quadratic grid, t_min 1e-5,
  no final step, from rho = 80).
* ``grid``: uniform / quadratic / log-SNR grids x 1, 2, 3 eps nodes at NFE 20.
* ``switch``: stochastic gDDIM (lambda = 1) from the start down to ``t_s``, deterministic gDDIM
  (2 nodes) below, on one quadratic grid of NFE 20: ``t_s = 0`` is fully stochastic, ``t_s = T``
  fully deterministic. Where the deterministic flow loses fidelity shows as the ``t_s`` at which
  FID turns.
* ``spectrum``: per-DCT-frequency variance of the samples against the training digits, by band
  ``i + j`` (the blur erases high bands first), for deterministic gDDIM at NFE 20 and ancestral at
  NFE 50.

Usage::

    python benchmarks/bdm_diagnosis.py --run bdm_pc configs/bdm.yaml <ckpt> --run bdm configs/bdm.yaml <ckpt> \
        --model-args precondition=false --out benchmarks/results/bdm_diagnosis

``--model-args`` are per ``--run`` (comma separated ``key=value`` init args of the model, to load a
checkpoint trained with a setting the config no longer has); use ``-`` for none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_fid import OFFICIAL_BDM, fid_of, kid_of, load_model, make_kid  # noqa: E402

from gddim_lightning.data.digits import load_digits_split  # noqa: E402
from gddim_lightning.evaluation import make_digits_fid  # noqa: E402
from gddim_lightning.samplers import (  # noqa: E402
    GDDIM, Ancestral, LogSNRGrid, QuadraticGrid, Sampler, UniformGrid, deterministic_plan, stochastic_plan,
)
from gddim_lightning.samplers.base import Callback, CountingEps, SampleNoise  # noqa: E402
from gddim_lightning.sdes.base import LinearSDE  # noqa: E402


class SwitchSampler(Sampler):
    """Stochastic gDDIM (``lambda_``) on the grid times above ``t_switch``, deterministic gDDIM (``order``
    nodes) below, on one quadratic grid; NFE = ``nfe`` (Tweedie final step)."""

    def __init__(self, nfe: int, t_switch: float, lambda_: float = 1.0, order: int = 2, **kw: Any) -> None:
        super().__init__(**kw)
        self.nfe, self.t_switch, self.lambda_, self.order = nfe, float(t_switch), float(lambda_), order
        self.grid = QuadraticGrid()

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        times = self.times(process)  # n_steps grid steps: nfe less the denoising evaluation
        n = times.numel() - 1
        j = int((times[:-1] > self.t_switch).sum())  # steps taken stochastically
        sto = stochastic_plan(process, times, self.lambda_).ops(("psi", "eps", "noise"), u)
        det = deterministic_plan(process, times[j:], self.order).ops(("psi", "C"), u) if j < n else None
        history: list[Tensor] = []
        for i in range(n):
            e = eps(u, times[i].item(), i)
            if i < j:  # exact Gaussian step of the lambda-SDE, noise on every step but the very last
                Psi, Ce, Cz = (op[i] for op in sto)
                u = Psi @ u + Ce @ e
                if i < n - 1:
                    u = u + Cz @ noise.randn(process.state_shape)
            else:
                (Psi, C), k = det, i - j
                history = [e] + history[: self.order - 1]
                u = Psi[k] @ u + sum(C[k, m] @ e_m for m, e_m in enumerate(history))
        return u, {"times": times, "stochastic_steps": j}


def experiments(T_rho80: float) -> dict[str, list[tuple[str, Sampler]]]:
    out: dict[str, list[tuple[str, Sampler]]] = {"start": [], "grid": [], "switch": []}
    for nfe in (20, 50):
        out["start"] += [(f"q=1 from T, NFE {nfe}", GDDIM(nfe, q=1)),
                         (f"q=1 from rho=80, NFE {nfe}", GDDIM(nfe, q=1, rho_start=80.0)),
                         (f"q=1 from rho=20, NFE {nfe}", GDDIM(nfe, q=1, rho_start=20.0)),
                         (f"official BDM sampler, NFE {nfe}", GDDIM(nfe, **OFFICIAL_BDM))]
    for gname, grid in (("uniform", UniformGrid()), ("quadratic", QuadraticGrid()), ("log-SNR", LogSNRGrid())):
        for order in (1, 2, 3):
            out["grid"].append((f"{gname}, {order} node(s), rho=80", GDDIM(20, q=order - 1, grid=grid, rho_start=80.0)))
    for ts in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, T_rho80):
        out["switch"].append((f"t_s = {ts:.3g}", SwitchSampler(20, ts, rho_start=80.0)))
    return out


def band_variance(process: LinearSDE, x: Tensor) -> list[float]:
    """Variance of the samples' DCT coefficients, summed over each band ``i + j`` (BDM's basis)."""
    y = process.layout.to_blocks(process.layout.lift(x.double()))[:, process.layout.data_index]  # [B, C, H, W]
    var = y.var(0).sum(0)  # [H, W]
    H, W = var.shape
    band = torch.arange(H)[:, None] + torch.arange(W)[None, :]
    return [float(var[band == k].sum()) for k in range(H + W - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs=3, action="append", metavar=("NAME", "CONFIG", "CKPT"), required=True)
    ap.add_argument("--model-args", nargs="*", default=None, help="per --run: key=value,... or -")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="experiments to run (start grid switch spectrum)")
    ap.add_argument("--out", default="benchmarks/results/bdm_diagnosis")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.with_suffix(".json").exists() and not args.overwrite:
        sys.exit(f"{out.with_suffix('.json')} exists; pass --overwrite to replace it")
    model_args = args.model_args or ["-"] * len(args.run)
    train, _ = load_digits_split("train")
    val, _ = load_digits_split("val")
    fid = make_digits_fid(real_images=train)
    kid = make_kid(train, min(len(val), args.num_samples))
    seeds = list(range(args.num_samples))
    results: dict[str, Any] = {"num_samples": args.num_samples, "floor_fid": fid_of(fid, val),
                               "floor_kid": kid_of(kid, val), "runs": {}}
    for (name, config, ckpt), margs in zip(args.run, model_args):
        model = load_model(config, ckpt, margs)
        p = model.process
        res: dict[str, Any] = {"config": config, "ckpt": ckpt, "model_args": margs, "process": p.describe(),
                               "t_rho80": p.time_at_rho(80.0), "t_rho20": p.time_at_rho(20.0)}
        for exp, samplers in experiments(res["t_rho80"]).items():
            if args.only and exp not in args.only:
                continue
            rows = []
            for label, sampler in samplers:
                s = model.sample(seeds, sampler, batch_size=500).samples
                ok = bool(torch.isfinite(s).all())
                f = fid_of(fid, s.clamp(-1, 1)) if ok else math.inf
                k = kid_of(kid, s.clamp(-1, 1))[0] if ok else math.inf
                rows.append({"label": label, "fid": f, "kid": k})
                print(f"{name} {exp:7s} {label:34s} FID {f:8.2f}  KID {1e3 * k:7.2f}e-3", flush=True)
            res[exp] = rows
        if not args.only or "spectrum" in args.only:
            data_bands = band_variance(p, train)
            spec = {"data": data_bands}
            for label, sampler in (("gDDIM q=1 NFE 20 rho=80", GDDIM(20, q=1, rho_start=80.0)),
                                   ("gDDIM q=1 NFE 20 from T", GDDIM(20, q=1)),
                                   ("ancestral NFE 50", Ancestral(50))):
                s = model.sample(seeds, sampler, batch_size=500).samples
                spec[label] = band_variance(p, s.clamp(-1, 1))
            res["spectrum"] = spec
            print(name, "spectrum (sample / data variance by band i+j):")
            for label, v in spec.items():
                if label != "data":
                    print(f"  {label:26s}", " ".join(f"{a / b:5.2f}" for a, b in zip(v, data_bands)))
        results["runs"][name] = res
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"BDM diagnosis, {results['num_samples']} samples per entry, digits FID (KID x 1e3). Floor (297 held-out "
             f"digits): FID {results['floor_fid']:.2f}, KID {1e3 * results['floor_kid'][0]:.2f}.", ""]
    names = list(results["runs"])
    for exp in ("start", "grid", "switch"):
        if not all(exp in results["runs"][n] for n in names):
            continue
        lines += [f"#### {exp}", "", "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i, row in enumerate(results["runs"][names[0]][exp]):
            cells = [f"{results['runs'][n][exp][i]['fid']:.2f} ({1e3 * results['runs'][n][exp][i]['kid']:.2f})"
                     for n in names]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    for n in names:
        spec = results["runs"][n].get("spectrum")
        if not spec:
            continue
        data = spec["data"]
        lines += [f"#### spectrum: {n} (sample variance / data variance per DCT band i+j)", "",
                  "| sampler | " + " | ".join(str(k) for k in range(len(data))) + " |",
                  "|---|" + "---|" * len(data)]
        for label, v in spec.items():
            if label != "data":
                lines.append(f"| {label} | " + " | ".join(f"{a / b:.2f}" for a, b in zip(v, data)) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
