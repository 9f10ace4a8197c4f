#!/usr/bin/env bash
# Device check: on a CUDA machine, fit each default digits config for 200 steps, predict 1000 samples
# with its gDDIM sampler at NFE 20, and print steps/s, samples/s and peak GPU memory per config.
# Record its output (with the date and the device) in docs/results.md whenever a GPU is available.
#
#   bash scripts/device_check.sh                      # the check (needs CUDA)
#   STEPS=2 SAMPLES=16 ACCELERATOR=cpu bash scripts/device_check.sh   # a dry run of the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
export STEPS="${STEPS:-200}" SAMPLES="${SAMPLES:-1000}" ACCELERATOR="${ACCELERATOR:-gpu}"
OUT="${OUT:-$(mktemp -d)}"
export OUT
python - <<'PY'
import json, os, time
from datetime import datetime, timezone

import torch
from lightning.pytorch import Callback

from gddim_lightning.cli import main, quiet_third_party_noise

steps, samples, acc, out = int(os.environ["STEPS"]), int(os.environ["SAMPLES"]), os.environ["ACCELERATOR"], os.environ["OUT"]
if acc == "gpu" and not torch.cuda.is_available():
    raise SystemExit("device_check: no CUDA device (ACCELERATOR=cpu runs the script on the CPU)")
quiet_third_party_noise()
cuda = acc == "gpu"
device = torch.cuda.get_device_name(0) if cuda else "cpu"


class Clock(Callback):
    """Wall time of the training loop alone (no start-up, no final evaluation)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1 and not hasattr(self, "t0"):  # after the first step: warm-up excluded
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        if cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - getattr(self, "t0", time.perf_counter())


common = ["--trainer.accelerator", acc, "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.logger", "false", "--trainer.enable_model_summary", "false"]
rows = []
for name in ("vp", "cld", "bdm"):
    root = os.path.join(out, name)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = Clock()
    cli = main(["--config", f"configs/{name}.yaml", *common, "--trainer.max_steps", str(steps),
                "--trainer.callbacks=[]", "--trainer.default_root_dir", root, "--checkpoint.dirpath",
                os.path.join(root, "ckpt")], run=False)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    model = cli.model.to("cuda" if cuda else "cpu").eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = model.sample(list(range(samples)), batch_size=min(samples, 1000))
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rows.append({"config": f"configs/{name}.yaml", "fit_steps_per_s": (steps - 1) / max(clock.seconds, 1e-9),
                 "fit_peak_mib": fit_mem, "predict_samples_per_s": samples / dt, "predict_nfe": res.nfe,
                 "predict_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
                 "finite": bool(torch.isfinite(res.samples).all())})

stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
print(f"device check {stamp} on {device} (torch {torch.__version__}); fit {steps} steps, predict {samples} samples")
print("| config | fit steps/s | fit peak MiB | predict samples/s (NFE) | predict peak MiB | finite |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['config']} | {r['fit_steps_per_s']:.1f} | {r['fit_peak_mib']:.0f} | "
          f"{r['predict_samples_per_s']:.0f} ({r['predict_nfe']}) | {r['predict_peak_mib']:.0f} | {r['finite']} |")
with open(os.path.join(out, "device_check.json"), "w") as f:
    json.dump({"date": stamp, "device": device, "torch": torch.__version__, "rows": rows}, f, indent=2)
if not all(r["finite"] for r in rows):
    raise SystemExit("device_check: non-finite samples")
PY
