"""Sample grids of several samplers at a few NFE on a trained digits model: one picture, a row of
panels per sampler and a column per NFE, every panel from the same seeds.

    python benchmarks/sample_grids.py --run bdm configs/bdm.yaml pretrained/bdm_digits.ckpt \\
        --samplers 'gDDIM q=2' Ancestral 'gDDIM lambda=1' --nfe 10 20 --out docs/assets/grids_bdm.png

Sampler labels are those of ``digits_fid.py``. 36 samples per panel (seeds 0-35): seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_fid import load_model, samplers_for  # noqa: E402

from gddim_lightning.visuals import image_grid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs=3, required=True, metavar=("NAME", "CONFIG", "CKPT"))
    ap.add_argument("--samplers", nargs="+", required=True, help="digits_fid.py sampler labels")
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--num", type=int, default=36, help="samples per panel (seeds 0 .. num - 1)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write (refused if it exists)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"{args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, config, ckpt = args.run
    model = load_model(config, ckpt)
    available = {(label, n): s for label, s in samplers_for(model, args.nfe) for n in args.nfe
                 if getattr(s, "nfe", None) in (n, n + 1)}
    missing = [label for label in args.samplers if not any(k[0] == label for k in available)]
    if missing:
        print(f"unknown or inapplicable sampler label(s) for this model: {missing}", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(len(args.samplers), len(args.nfe), squeeze=False,
                             figsize=(2.6 * len(args.nfe), 2.8 * len(args.samplers)))
    for i, label in enumerate(args.samplers):
        for j, n in enumerate(args.nfe):
            sampler = available[(label, n)]
            res = model.sample(list(range(args.num)), sampler, batch_size=args.num)
            grid = image_grid(res.samples.clamp(-1, 1), padding=1, pad_value=1.0, min_size=8)
            ax = axes[i][j]
            ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}, NFE {res.nfe}", fontsize=9)
    fig.suptitle(f"{name}: samples from seeds 0-{args.num - 1} ({Path(ckpt).name})", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
