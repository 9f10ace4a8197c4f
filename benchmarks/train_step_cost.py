"""Cost of one training step of each digits config, as ratios measured in one process (A/B rounds,
median), so that a machine shared with other jobs still gives a fair comparison.

    python benchmarks/train_step_cost.py --threads 2 --configs cld vp bdm cld_precond

The absolute time of the default fit on an idle 2-core machine (configs/cld.yaml, 8 min 31 s) is on
the results page; multiply it by a config's ratio to estimate that config's fit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gddim_lightning.cli import main as cli_main
from gddim_lightning.data import DigitsDataModule


def build(name: str):
    cli = cli_main(["--config", f"configs/{name}.yaml"], run=False)
    model = cli.model.train()
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    return model, opt


def step(model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    loss = model.loss(batch)
    loss.backward()
    opt.step()
    model.ema.update()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["cld", "vp", "bdm", "cld_precond"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per config and round")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dm = DigitsDataModule(batch_size=128)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, (list, tuple)) else batch
    models = {name: build(name) for name in args.configs}
    for name, (model, opt) in models.items():  # warm-up (plans, allocator)
        step(model, opt, batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, batch)
            times[name].append((time.perf_counter() - t0) / args.steps)
    ref = statistics.median(times[args.configs[0]])
    print(f"| config | median s/step ({args.threads} threads, batch 128) | ratio to {args.configs[0]} |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| configs/{name}.yaml | {med:.3f} | {med / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
