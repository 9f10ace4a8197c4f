"""Digits-FID of every sampler against NFE on trained digits models, plus throughput and overhead.

Usage (after training, e.g. ``python -m gddim_lightning fit --config configs/cld.yaml``)::

    python benchmarks/digits_fid.py --run cld configs/cld.yaml runs/cld/.../checkpoints/last.ckpt \
        --run vp configs/vp.yaml <ckpt> --run bdm configs/bdm.yaml <ckpt> --num-samples 2000 \
        --out benchmarks/results/digits_fid

Writes ``<out>.json`` and ``<out>.md`` (refuses to overwrite without ``--overwrite``). FID uses the
package's digits feature network against the 1500 training digits; the floor (held-out real digits
vs the training digits) is reported with it. KID (unbiased, so comparable across sample sizes) is
reported beside every FID, on subsets of the size of the held-out set, floor included.

``--data mnist`` runs the same tables on the 28x28 MNIST models (`configs/mnist_*.yaml`): FID and KID
on the shipped MNIST feature network against the 4,000 training digits, held-out = the 1,000
held-out digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from gddim_lightning.cli import main as cli_main
from gddim_lightning.data.digits import load_digits_split
from gddim_lightning.data.mnist import load_mnist_split, to_unit_range
from gddim_lightning.evaluation import load_digits_feature_net, load_mnist_feature_net, make_digits_fid, make_mnist_fid

#: data set -> (training images, held-out images, FID factory, feature network), images in [-1, 1]
DATASETS = {
    "digits": (lambda: load_digits_split("train")[0], lambda: load_digits_split("val")[0], make_digits_fid,
               load_digits_feature_net),
    "mnist": (lambda: to_unit_range(load_mnist_split("train")[0]), lambda: to_unit_range(load_mnist_split("heldout")[0]),
              make_mnist_fid, load_mnist_feature_net),
}
#: samples per network call when --batch-size is not given (measured: ms per image on 2 cores)
DEFAULT_BATCH = {"digits": 500, "mnist": 100}
from gddim_lightning.samplers import (
    GDDIM, RK45, SSCS, Ancestral, EulerMaruyama, Heun, LogSNRGrid, PowerGrid, SampleNoise, UniformGrid,
)
from gddim_lightning.sdes import CLD

NFES = (10, 20, 50, 100, 200, 500, 1000)
#: official gDDIM BDM sampler (qsh-zh/gDDIM blur_jax): one eps node, quadratic grid from rho = 80 down
#: to t = 1e-5, no extra final step
OFFICIAL_BDM = dict(q=0, rho_start=80.0, t_min=1e-5, denoise="none")


def load_model(config: str, ckpt: str, model_args: str = "-"):
    """The config's model with the checkpoint's weights (EMA-only checkpoints of ``pretrained/`` too);
    ``model_args``: comma-separated ``key=value`` model init args on top of the config, or ``-``."""
    extra = []
    for kv in ([] if model_args in ("", "-") else model_args.split(",")):
        key, value = kv.split("=", 1)
        extra += [f"--model.init_args.{key}", value]
    model = cli_main(["--config", config, *extra], run=False).model
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def samplers_for(model, nfes):
    """(label, sampler) pairs the model accepts (a velocity-only CLD network refuses those that need the
    position score); Heun needs an odd NFE (2 per step + 1 denoising) so it gets ``n + 1``."""
    return [(label, s) for label, s in _all_samplers(model.process, nfes) if _accepts(model, s)]


def _accepts(model, sampler) -> bool:
    try:
        model.check_sampler(sampler)
    except ValueError:
        return False
    return True


def _all_samplers(process, nfes):
    out = []
    for n in nfes:
        out += [("gDDIM q=1", GDDIM(nfe=n, q=1)), ("gDDIM q=2", GDDIM(nfe=n, q=2)),
                ("gDDIM q=3", GDDIM(nfe=n, q=3)),
                ("gDDIM q=1 rho80", GDDIM(nfe=n, q=1, rho_start=80.0)),
                ("gDDIM q=2 rho80", GDDIM(nfe=n, q=2, rho_start=80.0)),
                ("gDDIM q=2 rho20", GDDIM(nfe=n, q=2, rho_start=20.0)),
                ("gDDIM q=2 logSNR", GDDIM(nfe=n, q=2, grid=LogSNRGrid())),
                ("gDDIM q=2 uniform", GDDIM(nfe=n, q=2, grid=UniformGrid())),
                ("gDDIM q=2 rho80 logSNR", GDDIM(nfe=n, q=2, rho_start=80.0, grid=LogSNRGrid())),
                ("gDDIM q=0", GDDIM(nfe=n, q=0)), ("gDDIM lambda=1", GDDIM(nfe=n, q=0, lambda_=1.0)),
                ("gDDIM lambda=0.3", GDDIM(nfe=n, q=0, lambda_=0.3)),
                ("gDDIM official BDM", GDDIM(nfe=n, **OFFICIAL_BDM)),
                ("gDDIM q=2 power1.5", GDDIM(nfe=n, q=2, grid=PowerGrid(1.5))),
                ("gDDIM q=2 power3", GDDIM(nfe=n, q=2, grid=PowerGrid(3.0))),
                ("gDDIM q=3 power3", GDDIM(nfe=n, q=3, grid=PowerGrid(3.0))),
                ("Euler-Maruyama", EulerMaruyama(nfe=n)), ("Heun (PF)", Heun(nfe=n if n % 2 else n + 1))]
        if isinstance(process, CLD):
            out += [("gDDIM L q=1", GDDIM(nfe=n, q=1, parameterization="L")),
                    ("gDDIM L q=1 euler", GDDIM(nfe=n, q=1, parameterization="L", denoise="euler")),
                    ("gDDIM L q=2", GDDIM(nfe=n, q=2, parameterization="L")),
                    ("gDDIM q=2 euler", GDDIM(nfe=n, q=2, denoise="euler")),
                    ("SSCS", SSCS(nfe=n)), ("SSCS (paper)", SSCS(nfe=n, score_time="start"))]
        else:
            out += [("Ancestral", Ancestral(nfe=n))]
    out += [("RK45 tol 1e-3", RK45(1e-3, 1e-3)), ("RK45 tol 1e-5", RK45(1e-5, 1e-5))]
    return out


def nfe_to_match(curve: dict[int, float], target: float) -> str:
    """Smallest NFE at which a baseline's FID reaches ``target`` (log-log interpolation); ``≤n`` when it
    already does at its smallest measured NFE ``n`` (how much smaller is not measured), ``>n`` when not
    even at its largest."""
    pts = sorted(curve.items())
    if pts and pts[0][1] <= target:
        return f"≤{pts[0][0]}"
    for (n0, f0), (n1, f1) in zip(pts, pts[1:]):
        if f1 <= target:
            w = (math.log(f0) - math.log(target)) / (math.log(f0) - math.log(f1))
            return f"{math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))):.0f}"
    return f">{pts[-1][0]}"


def nearest_train_distance(x, train) -> float:
    """Median L2 distance (pixels in [-1, 1]) from each image to its nearest training digit: a sampler
    whose samples sit much closer to the training digits than held-out real digits do is copying them."""
    d = torch.cdist(x.reshape(len(x), -1).double(), train.reshape(len(train), -1).double())
    return float(d.min(1).values.median())


def fid_of(fid, x):
    fid.reset()
    for k in range(0, len(x), 500):
        fid.update(x[k : k + 500], real=False)
    return float(fid.compute())


def make_kid(train, subset_size: int, feature_net=load_digits_feature_net):
    """torchmetrics KID on a feature network (unbiased MMD^2, cubic kernel), real = ``train``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    kid = KernelInceptionDistance(feature=feature_net(), subsets=50, subset_size=subset_size,
                                  reset_real_features=False, normalize=True)
    for k in range(0, len(train), 500):
        kid.update(train[k : k + 500], real=True)
    return kid


def kid_of(kid, x):
    kid.reset()
    torch.manual_seed(0)  # the subsets torchmetrics draws
    for k in range(0, len(x), 500):
        kid.update(x[k : k + 500], real=False)
    mean, std = kid.compute()
    return float(mean), float(std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--data", choices=sorted(DATASETS), default="digits", help="8x8 digits or 28x28 MNIST")
    ap.add_argument("--run", nargs=3, action="append", metavar=("NAME", "CONFIG", "CKPT"))
    ap.add_argument("--model-args", nargs="*", default=None,
                    help="per --run: comma-separated key=value model init args on top of its config, or -")
    ap.add_argument("--no-timing", action="store_true", help="skip the throughput measurement")
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="seeds seed_offset .. seed_offset + num_samples - 1 (another draw, for the FID's spread)")
    ap.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    ap.add_argument("--batch-size", type=int, default=None,
                    help="samples per network call; default: 500 on the 8x8 digits, 100 on MNIST, where batches "
                         "of 250 or more run 1.4-1.7x slower per image on 2 CPU cores (cache)")
    ap.add_argument("--samplers", nargs="+", default=None,
                    help="only these sampler labels, e.g. 'gDDIM q=2' Euler-Maruyama 'RK45 tol 1e-3'")
    ap.add_argument("--out", default="benchmarks/results/digits_fid")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the sampling network (faster on CPU after a warm-up; the samples differ from "
                         "eager ones by float rounding only; recorded in each row)")
    ap.add_argument("--markdown-from", metavar="JSON", help="only rewrite the Markdown of an existing JSON result")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the rows of several results (runs of the same model with other NFE or samplers) into "
                         "--out (.json, .md, .png); rows of the same sampler and NFE: the later file wins")
    ap.add_argument("--spread", nargs="+", metavar="JSON",
                    help="results of one model over several --seed-offset draws: write a table of every sampler's "
                         "FID per draw, mean and standard deviation, and paired differences, to --out (.md, .json)")
    args = ap.parse_args()
    if args.spread:
        out = Path(args.out)
        if out.with_suffix(".md").exists() and not args.overwrite:
            sys.exit(f"{out.with_suffix('.md')} exists; pass --overwrite to replace it")
        text, data = spread_table([json.loads(Path(f).read_text()) for f in args.spread])
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2))
        print(text)
        return
    if args.merge:
        merged = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        out = Path(args.out)
        if out.with_suffix(".json").exists() and not args.overwrite:
            sys.exit(f"{out.with_suffix('.json')} exists; pass --overwrite to replace it")
        out.with_suffix(".json").write_text(json.dumps(merged, indent=2))
        out.with_suffix(".md").write_text(markdown(merged))
        write_plot(out.with_suffix(".png"), merged)
        return
    if args.markdown_from:
        src = Path(args.markdown_from)
        data = json.loads(src.read_text())
        src.with_suffix(".md").write_text(markdown(data))
        write_plot(src.with_suffix(".png"), data)
        return
    if not args.run:
        ap.error("give at least one --run NAME CONFIG CKPT")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    for suffix in (".json", ".md"):
        if out.with_suffix(suffix).exists() and not args.overwrite:
            sys.exit(f"{out.with_suffix(suffix)} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    load_train, load_heldout, make_fid, feature_net = DATASETS[args.data]
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH[args.data]
    train, val = load_train(), load_heldout()
    fid = make_fid(real_images=train)
    floor = fid_of(fid, val)
    # against the held-out digits too: FID against the training set rewards memorisation; the floor of
    # this column is the training digits themselves (as many as the samples) against the held-out ones
    fid_heldout = make_fid(real_images=val)
    floor_heldout = fid_of(fid_heldout, train[: args.num_samples])
    nn_floor = nearest_train_distance(val, train)
    kid = make_kid(train, min(len(val), args.num_samples), feature_net)
    floor_kid = kid_of(kid, val)
    seeds = list(range(args.seed_offset, args.seed_offset + args.num_samples))
    results = {"floor_val_vs_train": floor, "floor_kid": floor_kid, "floor_n": len(val),
               "floor_train_vs_heldout": floor_heldout, "labels": "paper_q", "nn_floor_heldout": nn_floor,
               "num_samples": args.num_samples, "seed_offset": args.seed_offset, "runs": {},
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "data": args.data, "batch_size": args.batch_size}
    t_all = time.time()
    model_args = args.model_args or ["-"] * len(args.run)
    if len(model_args) != len(args.run):
        ap.error("give one --model-args entry per --run (- for none)")
    for (name, config, ckpt), margs in zip(args.run, model_args):
        model = load_model(config, ckpt, margs)
        if args.compile:
            model.ema.ema_model = torch.compile(model.ema.ema_model)
        rows = []
        for label, sampler in samplers_for(model, args.nfe):
            if args.samplers and label not in args.samplers:
                continue
            t0 = time.time()
            res = model.sample(seeds, sampler, batch_size=args.batch_size)
            dt = time.time() - t0
            finite = bool(torch.isfinite(res.samples).all())
            x = res.samples.clamp(-1, 1)
            value = fid_of(fid, x) if finite else math.inf
            k_mean, k_std = kid_of(kid, x) if finite else (math.inf, math.nan)
            # the same samples' FID at the floor's sample size: FID is biased upward at small samples, so
            # this, not the 1000-sample FID, is what the held-out floor can be compared with
            small = fid_of(fid, x[: len(val)]) if finite else math.inf
            heldout = fid_of(fid_heldout, x) if finite else math.inf
            nn = nearest_train_distance(x, train) if finite else math.inf
            rows.append({"sampler": label, "nfe": res.nfe, "fid": value, "kid": k_mean, "kid_std": k_std,
                         f"fid_at_{len(val)}": small, "fid_vs_heldout": heldout, "nn_train_median": nn,
                         "seconds": dt, **({"compiled": True} if args.compile else {})})
            print(f"{name:4s} {label:18s} nfe={res.nfe:5d} fid={value:8.3f} kid={1e3 * k_mean:7.2f}e-3 {dt:6.1f}s",
                  flush=True)
            # every finished row is kept: a long run stopped midway still leaves its numbers
            results["runs"][name] = {"config": config, "ckpt": ckpt, "model_args": margs, "rows": rows,
                                     "timing": None, "partial": True}
            _write_json(out, results)
        results["runs"][name] = {"config": config, "ckpt": ckpt, "model_args": margs, "rows": rows,
                                 "timing": None if args.no_timing else throughput(model, 256)}
    results["seconds"] = time.time() - t_all
    _write_json(out, results)
    out.with_suffix(".md").write_text(markdown(results))
    write_plot(out.with_suffix(".png"), results)
    print(markdown(results))


def spread_table(parts: list[dict]) -> tuple[str, dict]:
    """FID of each (sampler, NFE) over several seed draws of the same model: per draw, mean and sample
    standard deviation, and for every pair of samplers at one NFE the paired difference (same seeds)."""
    import statistics

    fids: dict[tuple[str, int], dict[int, float]] = {}
    for part in parts:
        off = int(part.get("seed_offset", 0))
        for run in part["runs"].values():
            for r in run["rows"]:
                fids.setdefault((r["sampler"], r["nfe"]), {})[off] = r["fid"]
    fids = {k: v for k, v in fids.items() if len(v) > 1}  # in one draw only: nothing to say about spread
    offsets = sorted({o for v in fids.values() for o in v})
    n = parts[0]["num_samples"]
    lines = [f"FID over {len(offsets)} draws of {n} samples (seeds offset + 0 .. {n - 1}); sd = sample standard "
             "deviation over the draws.", "",
             "| sampler | NFE | " + " | ".join(f"seeds {o}+" for o in offsets) + " | mean | sd |",
             "|---|---|" + "---|" * (len(offsets) + 2)]
    data = {"offsets": offsets, "rows": [], "pairs": []}
    for (label, nfe), v in sorted(fids.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        vals = [v[o] for o in offsets if o in v]
        mean, sd = statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan"))
        cells = " | ".join(f"{v[o]:.2f}" if o in v else "" for o in offsets)
        lines.append(f"| {label} | {nfe} | {cells} | {mean:.2f} | {sd:.2f} |")
        data["rows"].append({"sampler": label, "nfe": nfe, "fid": v, "mean": mean, "sd": sd})
    lines += ["", "Paired differences (same seeds, same draws): mean +- standard error over the draws.", "",
              "| NFE | sampler A | sampler B | A - B per draw | mean +- SE |", "|---|---|---|---|---|"]
    keys = sorted(fids)
    for i, (a, na) in enumerate(keys):
        for b, nb in keys[i + 1:]:
            common = [o for o in offsets if o in fids[(a, na)] and o in fids[(b, nb)]]
            if na != nb or len(common) < 2:
                continue
            d = [fids[(a, na)][o] - fids[(b, nb)][o] for o in common]
            se = statistics.stdev(d) / math.sqrt(len(d))
            lines.append(f"| {na} | {a} | {b} | {', '.join(f'{x:+.2f}' for x in d)} | "
                         f"{statistics.fmean(d):+.2f} +- {se:.2f} |")
            data["pairs"].append({"nfe": na, "a": a, "b": b, "diffs": d, "mean": statistics.fmean(d), "se": se})
    return "\n".join(lines) + "\n", data


def _write_json(out: Path, results: dict) -> None:
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out.with_suffix(".json"))


def merge_results(parts: list[dict]) -> dict:
    """One result from several: settings of the first, rows of every run by (sampler, NFE)."""
    out = {k: v for k, v in parts[0].items() if k != "runs"}
    out["runs"], out["merged_from"] = {}, len(parts)
    for part in parts:
        for key, value in part.items():  # settings only later parts have (e.g. the held-out floor)
            if key not in ("runs", "seconds", "seed_offset"):
                out.setdefault(key, value)
        for name, run in part["runs"].items():
            dst = out["runs"].setdefault(name, {**run, "rows": []})
            rows = {(r["sampler"], r["nfe"]): r for r in dst["rows"]}
            rows.update({(r["sampler"], r["nfe"]): r for r in run["rows"]})
            dst["rows"] = sorted(rows.values(), key=lambda r: (r["sampler"], r["nfe"]))
            dst["timing"] = dst.get("timing") or run.get("timing")
    return out


def write_plot(path: Path, results: dict, title: str = "") -> None:
    """FID against NFE (log-log), one panel per run, one line per sampler; adaptive RK45 as a marker and
    the held-out floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.4 * len(runs), 4.6), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        curves: dict[str, list[tuple[int, float]]] = {}
        for r in run["rows"]:
            if math.isfinite(r["fid"]):
                curves.setdefault(r["sampler"], []).append((r["nfe"], r["fid"]))
        for label, pts in curves.items():
            pts.sort()
            if label.startswith("RK45"):
                ax.plot(*zip(*pts), "k*", ms=10, label=f"{label} (adaptive)")
                continue
            style = "-" if label.startswith("gDDIM") and "lambda" not in label else "--"
            ax.plot(*zip(*pts), style, marker="o", ms=3, label=label)
        ax.axhline(results["floor_val_vs_train"], color="grey", ls=":", label="held-out floor (297 digits)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("digits FID (1000 samples)")
        ax.set_title(f"{name} {title}".strip())
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(model, batch: int) -> dict:
    """Sampling throughput at NFE 20 and the sampler's time beyond the network calls (batch ``batch``)."""
    net_time = [0.0]
    fn = model.eps_fn(True)

    def timed(u, t):
        t0 = time.perf_counter()
        e = fn(u, t)
        net_time[0] += time.perf_counter() - t0
        return e

    sampler = GDDIM(nfe=20, q=1)
    if not _accepts(model, sampler):  # velocity-only CLD network
        sampler = GDDIM(nfe=20, q=1, parameterization="L", denoise="euler")
    noise = SampleNoise(range(batch))
    sampler.sample(model.process, timed, noise)  # warm-up: plan build, caches
    net_time[0] = 0.0
    t0 = time.perf_counter()
    sampler.sample(model.process, timed, noise)
    total = time.perf_counter() - t0
    # training throughput: forward + backward + step on one batch of digits
    x = load_digits_split("train")[0][:128]
    opt = torch.optim.Adam(model.net.parameters(), lr=0.0)
    model.train()
    def train_step() -> None:
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()

    for _ in range(2):  # warm-up
        train_step()
    t1 = time.perf_counter()
    steps = 10
    for _ in range(steps):
        train_step()
    train_s = (time.perf_counter() - t1) / steps
    model.eval()
    return {"sample_batch": batch, "sample_seconds": total, "samples_per_s_nfe20": batch / total,
            "network_seconds": net_time[0], "sampler_overhead_fraction": (total - net_time[0]) / total,
            "train_samples_per_s": 128 / train_s}


def markdown(results: dict) -> str:
    data = results.get("data", "digits")
    n_floor, n_samples = results.get("floor_n", 297), results["num_samples"]
    # FID is biased upward at small samples: a floor from fewer real digits than there are samples reads
    # high against the samples' FID, and the samples' FID at the floor's size is then tabulated too
    small_floor = n_floor < n_samples
    lines = [f"{'MNIST' if data == 'mnist' else 'Digits'} FID ({n_samples} samples vs the "
             f"{4000 if data == 'mnist' else 1500} training digits; "
             f"floor = held-out real digits: {results['floor_val_vs_train']:.2f}, "
             + (f"from only {n_floor} digits, so biased high against the samples' FID)." if small_floor
                else f"from {n_floor} digits, as many as the samples, so comparable with their FID)."), ""]
    if "floor_kid" in results:
        lines += [f"KID x 1e3 (unbiased at any sample size; subsets of {n_floor}): floor "
                  f"{1e3 * results['floor_kid'][0]:.2f} +- {1e3 * results['floor_kid'][1]:.2f}. KID is shown in "
                  "brackets after each FID.", ""]
    for name, run in results["runs"].items():
        table: dict[str, dict[int, float]] = {}
        kids: dict[str, dict[int, float]] = {}
        for r in run["rows"]:
            table.setdefault(r["sampler"], {})[r["nfe"]] = r["fid"]
            if "kid" in r:
                kids.setdefault(r["sampler"], {})[r["nfe"]] = r["kid"]
        # Heun runs at NFE n + 1 (2 per step + denoising): shown in column n, labelled. The columns are
        # every fixed-grid NFE, Heun's included, so a run of Heun alone still gets its columns.
        nfes = sorted({r["nfe"] - 1 if r["sampler"].startswith("Heun") else r["nfe"] for r in run["rows"]
                       if not r["sampler"].startswith("RK45")})
        headers = [f"NFE {n}" for n in nfes] or ["adaptive"]  # an RK45-only run: one column
        lines += [f"### {name}", "", "| sampler | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
        for label, vals in table.items():
            if label.startswith("RK45"):
                continue
            cells = []
            for n in nfes:
                v = vals.get(n, vals.get(n + 1))
                k = kids.get(label, {}).get(n, kids.get(label, {}).get(n + 1))
                cells.append("" if v is None else f"{v:.2f}" + ("" if k is None else f" ({1e3 * k:.2f})"))
            shown = f"{label} (NFE n+1)" if label.startswith("Heun") else label
            lines.append(f"| {shown} | " + " | ".join(cells) + " |")
        small_key = f"fid_at_{n_floor}"
        small = {(r["sampler"], r["nfe"]): r[small_key] for r in run["rows"] if small_key in r}
        for label, vals in table.items():
            if label.startswith("RK45"):
                (n, v), = vals.items()
                k = kids.get(label, {}).get(n)
                kid_txt = "" if k is None else f" ({1e3 * k:.2f})"
                lines.append(f"| {label} (adaptive) | NFE {n}: {v:.2f}{kid_txt} |" + " |" * (len(headers) - 1))
        compiled = [f"{r['sampler']} at NFE {r['nfe']}" for r in run["rows"] if r.get("compiled")]
        if compiled:
            lines += ["", "Sampled with `--compile` (torch.compile of the network; samples differ from eager ones by "
                      "float rounding only): " + ", ".join(compiled) + "."]
        ref_label = next((k for k in ("gDDIM q=2", "gDDIM q=2 rho80", "gDDIM q=1", "gDDIM L q=1 euler") if k in table), None)
        ref = table.get(ref_label, {}).get(20)
        if ref is not None:
            lines += ["", f"NFE each sampler needs to reach {ref_label} at NFE 20 (FID {ref:.2f}):", "",
                      "| sampler | NFE to match |", "|---|---|"]
            for label, vals in table.items():
                if not label.startswith("RK45"):
                    lines.append(f"| {label} | {nfe_to_match(vals, ref)} |")
        heldout = {(r["sampler"], r["nfe"]): r["fid_vs_heldout"] for r in run["rows"] if "fid_vs_heldout" in r}
        if heldout:
            nn = {(r["sampler"], r["nfe"]): r.get("nn_train_median") for r in run["rows"]}
            lines += ["", f"Against the {n_floor} held-out digits instead of the training digits "
                      f"(floor: {n_samples} training digits against them, "
                      f"{results['floor_train_vs_heldout']:.2f}; a model that copies training digits gains nothing "
                      "here), and the median distance from a sample to its nearest training digit (held-out real "
                      f"digits: {results.get('nn_floor_heldout', float('nan')):.2f}):", "",
                      "| sampler | NFE | FID vs training digits | FID vs held-out digits | nearest training digit |",
                      "|---|---|---|---|---|"]
            for (label, n), v in sorted(heldout.items()):
                d = nn.get((label, n))
                lines.append(f"| {label} | {n} | {table[label][n]:.2f} | {v:.2f} | "
                             f"{'' if d is None else f'{d:.2f}'} |")
        if small and small_floor:
            lines += ["", f"At the floor's sample size: FID of the first {n_floor} of the same samples, against the "
                      f"held-out floor {results['floor_val_vs_train']:.2f} ({n_floor} digits):", "",
                      f"| sampler | NFE | FID, {n_samples} samples | FID, first {n_floor} |", "|---|---|---|---|"]
            for (label, n), v in sorted(small.items()):
                lines.append(f"| {label} | {n} | {table[label][n]:.2f} | {v:.2f} |")
        tm = run["timing"]
        if tm:
            lines += ["", f"Sampling at NFE 20, batch {tm['sample_batch']}: {tm['samples_per_s_nfe20']:.1f} samples/s; "
                  f"sampler overhead beyond network calls: {100 * tm['sampler_overhead_fraction']:.1f}%. "
                  f"Training: {tm['train_samples_per_s']:.0f} samples/s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
