"""The bad-input catalogue: every mistake a user is likely to make gets ONE clear error in their terms.

`CASES` lists what the user did, how to trigger it (command-line arguments run in-process through
``gddim_lightning.cli.main``, or a Python call), the outcome (an exception type, or `CLI_EXIT`: the CLI
exits with a non-zero code and prints ``error: ...`` on stderr) and a regular expression the message
must match: it names the key, path or allowed values. Each case is one test. ``docs/errors.md`` is the
user-facing table of the same cases; `test_docs_table_matches_the_catalogue` keeps the two in step
(every id is a row, the count in the page's first sentence is ``len(CASES)``, and every row quotes a
message excerpt that the case's regex matches).

What "one clear message" means here:

* CLI exit: code not 0/None, exactly one ``error:`` block on stderr that matches the regex, and no
  Python traceback on stderr.
* exception: of the declared type, its message matches the regex and is not jsonargparse's wrapper
  ("Does not validate against any of the Union subtypes ...", which buries the message in a dump of
  the parsed config).

``GDDIMCLI`` turns a constructor's error that jsonargparse wraps (see `WRAPPED`) into a CLI exit with
the constructor's own message; a case that raises the wrapper out of ``main`` fails.

Everything runs on CPU in ``tmp_path`` (the working directory of every case) in well under a minute.
"""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from gddim_lightning.callbacks import SampleCallback
from gddim_lightning.cli import main
from gddim_lightning.data import (
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ToyDataModule,
)
from gddim_lightning.evaluation import make_inception_fid
from gddim_lightning.module import CLDModule, DiffusionModule
from gddim_lightning.nets import MLP, UNet
from gddim_lightning.samplers import GDDIM, ExplicitGrid, SampleNoise
from gddim_lightning.sdes import VPSDE

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter:UserWarning",
    "ignore:predict with no --ckpt_path:UserWarning",
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
DOCS_PAGE = REPO / "docs" / "errors.md"

CLI_EXIT = "CLI exits with code != 0"
#: jsonargparse's wrapper around an error raised while instantiating a class from the config
WRAPPED = "Does not validate against any of the Union subtypes"
TMP = "{tmp}"  # replaced by the test's tmp_path in CLI arguments


@dataclass(frozen=True)
class Cli:
    """Command-line arguments for ``gddim_lightning.cli.main`` (``{tmp}`` is the test's tmp_path);
    ``setup(tmp_path)`` prepares files first."""

    args: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: stable name (the first cell of its row in docs/errors.md).
        what: what the user did, in their terms.
        trigger: `Cli` arguments, or a callable ``f(tmp_path)`` (the Python API).
        expect: the exception type, or `CLI_EXIT`.
        match: regex the message must match (``re.search``).
        check: optional extra assertion ``f(tmp_path)`` after the error (e.g. nothing was executed).
    """

    id: str
    what: str
    trigger: Cli | Callable[[Path], Any]
    expect: type[BaseException] | str
    match: str
    check: Callable[[Path], None] | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------ triggers
SAFE = ("--trainer.fast_dev_run", "1", "--trainer.default_root_dir", TMP, "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
TINY_TOY = ("--model.init_args.backbone.init_args.hidden", "16", "--model.init_args.backbone.init_args.depth", "1",
            "--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "64")
TINY_UNET = ("--model.init_args.backbone.init_args.base_channels", "8",
             "--model.init_args.backbone.init_args.num_res_blocks", "1", "--data.init_args.batch_size", "16")


def cli(sub: str, config: str, *extra: str, setup: Callable[[Path], None] | None = None) -> Cli:
    """``sub --config configs/<config>``, shrunk and kept in tmp_path, then ``extra`` (the mistake)."""
    tiny = TINY_TOY if config.startswith("toy") else TINY_UNET
    return Cli((sub, "--config", str(CONFIGS / config), *SAFE, *tiny, *extra), setup)


def with_yaml(text: str, *extra: str, config: str = "toy_vp.yaml") -> Cli:
    """fit with configs/<config> plus a second config file ``{tmp}/extra.yaml`` holding ``text``."""

    def setup(tmp: Path) -> None:
        (tmp / "extra.yaml").write_text(text)

    return cli("fit", config, "--config", f"{TMP}/extra.yaml", *extra, setup=setup)


def write_fake_cifar(folder: Path, n: int = 4, data: Callable[[np.random.Generator], np.ndarray] | None = None,
                     skip: tuple[str, ...] = ()) -> None:
    """CIFAR-10 python batches of ``n`` random images each (``data`` replaces the pixel array)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        if name in skip:
            continue
        pixels = data(rng) if data else rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": [0] * len(pixels)}, f)


def write_images(folder: Path, count: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")


def cifar_setup(tmp: Path, **kw: Any) -> None:
    write_fake_cifar(tmp / "cifar", **kw)
    CIFAR10DataModule(root=str(tmp / "cifar"), batch_size=2).setup("fit")


def corrupt_cifar(tmp: Path) -> None:
    write_fake_cifar(tmp / "cifar")
    (tmp / "cifar" / "data_batch_2").write_bytes(b"this is not a pickle")
    CIFAR10DataModule(root=str(tmp / "cifar"), batch_size=2).setup("fit")


def corrupt_image(tmp: Path) -> None:
    write_images(tmp / "imgs")
    (tmp / "imgs" / "broken.jpg").write_bytes(b"garbage")
    dm = ImageFolderDataModule(root=str(tmp / "imgs"), image_size=8, val_fraction=0.0, batch_size=8)
    list(dm.train_dataloader())


def empty_image_folder(tmp: Path) -> None:
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "notes.txt").write_text("no images here")
    ImageFolderDataModule(root=str(tmp / "imgs"), image_size=8)


def tiny_module(**kw: Any) -> DiffusionModule:
    return DiffusionModule(process=VPSDE, backbone=functools.partial(MLP, hidden=8, depth=1), data_shape=(2,),
                           sampler=GDDIM(nfe=4, q=0), **kw)


def nan_weights_sample(tmp: Path) -> None:
    """A diverged checkpoint: every weight NaN (network and EMA), then sampling."""
    m = tiny_module()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
        for p in m.ema.ema_model.parameters():
            p.fill_(float("nan"))
    m.sample([0, 1])


def inf_data_training_step(tmp: Path) -> None:
    """A batch holding inf (data outside any sane range): the loss is not finite."""
    tiny_module().training_step(torch.full((4, 2), float("inf")), 0)


def sample_vp(sampler: GDDIM) -> None:
    p = VPSDE((2,))
    sampler.sample(p, lambda u, t: torch.zeros_like(u), SampleNoise([0], dtype=torch.float64))


class _RunsCode:
    """Unpickling this calls a function: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_code_checkpoint(tmp: Path) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _RunsCode(tmp / "code-ran")}, tmp / "code.ckpt")


def nothing_ran(tmp: Path) -> None:
    assert not (tmp / "code-ran").exists(), "the checkpoint's pickled code was executed"


def occupied_out_dir(tmp: Path) -> None:
    (tmp / "samples").mkdir()
    (tmp / "samples" / "meta.json").write_text("{}")


def untouched_out_dir(tmp: Path) -> None:
    assert (tmp / "samples" / "meta.json").read_text() == "{}"


# ------------------------------------------------------------------------------ the catalogue
CASES: list[Case] = [
    # --- the command line and the config files
    Case("missing-subcommand", "ran the CLI without a subcommand", Cli(()), CLI_EXIT,
         r'expected "subcommand" to be one of \{fit,validate,test,predict\}'),
    Case("config-before-subcommand", "put --config before the subcommand",
         Cli(("--config", str(CONFIGS / "toy_vp.yaml"), "fit")), CLI_EXIT,
         r"Option 'model\.init_args\.[\w.]+' is not accepted before subcommand 'fit'"),
    Case("unknown-subcommand", "used a subcommand that does not exist (train)",
         Cli(("train", "--config", str(CONFIGS / "toy_vp.yaml"))), CLI_EXIT,
         r"invalid choice: 'train' \(choose from 'fit', 'validate', 'test', 'predict'\)"),
    Case("missing-config-file", "passed a --config file that does not exist",
         Cli(("fit", "--config", "configs/nope.yaml")), CLI_EXIT,
         r"Parser key \"config\": File does not exist: '.*configs/nope\.yaml'"),
    Case("config-not-yaml", "wrote a config that is not valid YAML (a tab for indentation)",
         with_yaml("trainer:\n\tmax_steps: 3\n"), CLI_EXIT,
         r"--config \S*extra\.yaml: not valid YAML at line 2, column 1: found character '\\t'"),
    Case("config-alias-bomb", "passed a YAML file whose aliases expand to a million values",
         with_yaml("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"), CLI_EXIT,
         r"--config \S*extra\.yaml: expands to more than 100000 values once its YAML aliases"),
    Case("seed-everything-out-of-range", "set seed_everything beyond 32 bits",
         cli("fit", "toy_vp.yaml", "--seed_everything", str(2 ** 70)), CLI_EXIT,
         r"seed_everything must be in \[0, 4294967295\] \(numpy's seed range\), got 1180591620717411303424"),
    Case("batch-size-absurd", "set the data batch size to 1e20",
         cli("fit", "toy_vp.yaml", "--data.init_args.batch_size", str(10 ** 20)), CLI_EXIT,
         r"data\.init_args\.batch_size must be an integer in \[1, 1048576\], got 100000000000000000000"),
    Case("empty-config", "passed an empty config file", with_yaml(""), CLI_EXIT,
         r"--config \S*extra\.yaml: expected a YAML mapping of sections \(model:, data:, trainer:, \.\.\.\), got an empty file"),
    Case("required-value-not-set", "used configs/cifar10_cld.yaml without setting the data root",
         Cli(("fit", "--config", str(CONFIGS / "cifar10_cld.yaml"))), CLI_EXIT,
         r"required value\(s\) not set \(still '\?\?\?' in the config\): data\.init_args\.root"),
    Case("unknown-model-class", "--model with a class that does not exist",
         cli("fit", "toy_vp.yaml", "--model", "gddim_lightning.module.NoSuchModule"), CLI_EXIT,
         r"module 'gddim_lightning\.module' has no attribute 'NoSuchModule'"),
    Case("unknown-process-class", "a process class_path that does not exist (VPSDEE)",
         cli("fit", "toy_vp.yaml", "--model.init_args.process", "gddim_lightning.sdes.VPSDEE"), CLI_EXIT,
         r"module 'gddim_lightning\.sdes' has no attribute 'VPSDEE'"),
    Case("unknown-backbone-class", "a backbone class_path with a wrong name (Unet for UNet)",
         cli("fit", "toy_vp.yaml", "--model.init_args.backbone", "gddim_lightning.nets.Unet"), CLI_EXIT,
         r"module 'gddim_lightning\.nets' has no attribute 'Unet'"),
    Case("unknown-backbone-module", "a backbone from a module that is not importable",
         cli("fit", "toy_vp.yaml", "--model.init_args.backbone", "my_nets.Net"), CLI_EXIT,
         r"No module named 'my_nets'"),
    Case("unknown-sampler-class", "a sampler class_path that does not exist (DDIM)",
         cli("fit", "toy_vp.yaml", "--model.init_args.sampler", "gddim_lightning.samplers.DDIM"), CLI_EXIT,
         r"module 'gddim_lightning\.samplers' has no attribute 'DDIM'"),
    Case("unknown-data-class", "a data class_path that does not exist",
         cli("fit", "toy_vp.yaml", "--data", "gddim_lightning.data.ToyData"), CLI_EXIT,
         r"module 'gddim_lightning\.data' has no attribute 'ToyData'"),
    Case("typo-top-level-key", "misspelled a top-level section in a config (trainr:)",
         with_yaml("trainr:\n  max_steps: 3\n"), CLI_EXIT,
         r"Subcommand 'fit' does not accept option 'trainr\.max_steps'"),
    Case("scheduler-without-optimizer", "gave --lr_scheduler without --optimizer",
         cli("fit", "toy_vp.yaml", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size",
             "10"), CLI_EXIT, r"--lr_scheduler is set but --optimizer is not"),
    Case("typo-top-level-flag", "misspelled a top-level flag (--trainr.max_steps)",
         cli("fit", "toy_vp.yaml", "--trainr.max_steps", "3"), CLI_EXIT,
         r"unrecognized arguments: --trainr\.max_steps 3"),
    Case("typo-trainer-key", "misspelled a trainer key in a config (max_stepz)",
         with_yaml("trainer:\n  max_stepz: 3\n"), CLI_EXIT,
         r"Subcommand 'fit' does not accept option 'trainer\.max_stepz'"),
    Case("typo-trainer-flag", "misspelled a trainer flag (--trainer.max_stepz)",
         cli("fit", "toy_vp.yaml", "--trainer.max_stepz", "3"), CLI_EXIT,
         r"unrecognized arguments: --trainer\.max_stepz 3"),
    Case("typo-model-key", "misspelled a model argument in a config (learning_rate for lr)",
         with_yaml("model:\n  init_args:\n    learning_rate: 0.1\n"), CLI_EXIT,
         r"Option 'learning_rate' is not accepted"),
    Case("typo-model-flag", "misspelled a model flag (--model.init_args.lrr)",
         cli("fit", "toy_vp.yaml", "--model.init_args.lrr", "0.1"), CLI_EXIT, r"Option 'lrr' is not accepted"),
    Case("typo-sampler-key", "gave the sampler an argument it does not have (steps for nfe)",
         cli("fit", "toy_vp.yaml", "--model.init_args.sampler.init_args.steps", "10"), CLI_EXIT,
         r"Option 'steps' is not accepted"),
    Case("string-for-int-flag", "gave a word where a number is expected (--trainer.max_steps ten)",
         cli("fit", "toy_vp.yaml", "--trainer.max_steps", "ten"), CLI_EXIT,
         r"Parser key \"trainer\.max_steps\":\s+Expected a <class 'int'>\. Got value: ten"),
    Case("string-for-int-in-config", "wrote a word where a number is expected in a config (nfe: twenty)",
         with_yaml("model:\n  init_args:\n    sampler:\n      init_args: {nfe: twenty}\n"), CLI_EXIT,
         r"Parser key \"nfe\":\s+Expected a <class 'int'>\. Got value: twenty"),
    Case("string-for-bool", "gave a non-boolean to a true/false option (--predict.overwrite maybe)",
         cli("fit", "toy_vp.yaml", "--predict.overwrite", "maybe"), CLI_EXIT,
         r"Parser key \"predict\.overwrite\":\s+Expected a <class 'bool'>\. Got value: maybe"),
    # --- shapes: data vs backbone vs process
    Case("unet-image-size-mismatch", "set the UNet's image_size to 16 for 8x8 data",
         cli("fit", "cld.yaml", "--model.init_args.backbone.init_args.image_size", "16"), CLI_EXIT,
         r"UNet\(image_size=16\) got input of size 8x8; set image_size=8 or resize the data"),
    Case("mlp-on-image-data", "used the MLP backbone on image data",
         cli("fit", "cld.yaml", "--model.init_args.backbone", "gddim_lightning.nets.MLP"), CLI_EXIT,
         r"MLP\(in_dim=2\) expects input of shape \[B, 2\]; got \(2, 2, 8, 8\)\. For images use the UNet backbone"),
    Case("unet-on-flat-data", "used the UNet backbone on 2-D points",
         cli("fit", "toy_vp.yaml", "--model.init_args.backbone", "gddim_lightning.nets.UNet"), CLI_EXIT,
         r"UNet expects input of shape \[B, C, H, W\]; got shape \(2, 2\)"),
    Case("backbone-output-channels", "set the backbone's output channels (3) unlike the state's (2)",
         cli("fit", "cld.yaml", "--model.init_args.backbone.init_args.out_channels", "3"), CLI_EXIT,
         r"model\.backbone returns shape \(3, 8, 8\), but this model needs \(2, 8, 8\)"),
    Case("unet-too-many-levels", "gave the UNet more downsampling levels than the image size allows",
         lambda tmp: UNet(2, image_size=8, channel_mult=(1, 2, 2, 2, 2)), ValueError,
         r"UNet\(image_size=8\) must be a positive multiple of 2\*\*\(len\(channel_mult\)-1\) = 16"),
    Case("batch-shape-mismatch", "fed the model batches of another shape than its data_shape",
         lambda tmp: tiny_module().loss(torch.zeros(4, 3)), ValueError,
         r"batch has sample shape \(3,\), model\.data_shape is \(2,\)"),
    Case("cld-module-without-cld", "used CLDModule with a process that is not CLD",
         lambda tmp: CLDModule(process=VPSDE, backbone=functools.partial(MLP, hidden=8, depth=1),
                               data_shape=(2,)), TypeError,
         r"CLDModule needs a CLD process, got VPSDE"),
    Case("image-folder-channels", "asked an image folder for 2 channels",
         lambda tmp: ImageFolderDataModule(root=str(tmp), image_size=8, channels=2), ValueError,
         r"data\.init_args\.channels must be 1 or 3, got 2"),
    # --- data values and settings out of range
    Case("cifar-pixels-out-of-range", "gave CIFAR-10 batches whose pixels are not uint8 0..255",
         lambda tmp: cifar_setup(tmp, data=lambda rng: rng.integers(0, 1000, size=(4, 3072))), ValueError,
         r"b'data' must be uint8 \[N, 3072\], got int64"),
    Case("nan-in-data", "trained on data holding inf or NaN",
         inf_data_training_step, FloatingPointError,
         r"training loss is nan at global step 0; lower model\.lr, enable trainer\.gradient_clip_val, "
         r"or check the data range"),
    Case("digits-n-val-out-of-range", "held out 0 digits for validation",
         lambda tmp: DigitsDataModule(n_val=0), ValueError, r"data\.init_args\.n_val must be in \[1, 1796\], got 0"),
    Case("val-fraction-out-of-range", "set an image folder's val_fraction to 1",
         lambda tmp: ImageFolderDataModule(root=str(tmp), image_size=8, val_fraction=1.0), ValueError,
         r"data\.init_args\.val_fraction must be in \[0, 1\), got 1\.0"),
    Case("batch-size-zero", "set the batch size to 0",
         lambda tmp: ToyDataModule("checkerboard", batch_size=0), ValueError, r"data\.init_args\.batch_size must be >= 1, got 0"),
    Case("unknown-toy-name", "asked for a toy data set that does not exist",
         lambda tmp: ToyDataModule("spiral"), ValueError,
         r"data\.init_args\.name: unknown toy 'spiral'; allowed: checkerboard, swiss_roll"),
    Case("unknown-schedule", "asked for a VP noise schedule that does not exist",
         lambda tmp: VPSDE((2,), schedule="cubic"), ValueError,
         r"unknown schedule 'cubic'; choose 'linear', 'cosine'"),
    Case("unknown-parameterization", "set model.parameterization to something other than R or L",
         lambda tmp: tiny_module(parameterization="Q"), ValueError,
         r"model\.parameterization must be 'R' \(gDDIM\) or 'L' \(Cholesky\), got 'Q'"),
    # --- numerics
    Case("nan-from-network", "sampled a network whose weights are NaN (a diverged checkpoint)",
         nan_weights_sample, FloatingPointError,
         r"eps_fn returned NaN or inf at step 0 \(t=1\); check the network weights"),
    # --- sampler settings
    Case("sampler-q-negative", "set the gDDIM multistep order q to -1", lambda tmp: GDDIM(q=-1), ValueError,
         r"q must be an integer >= 0, got -1"),
    Case("sampler-q-4", "set the gDDIM multistep order q to 4", lambda tmp: GDDIM(q=4), ValueError,
         r"q \(the multistep order: polynomial degree, nodes - 1\) must be 0, 1, 2 or 3, got 4"),
    Case("knob-lr-nan", "set the learning rate to .nan in YAML", with_yaml("model:\n  init_args:\n    lr: .nan\n"),
         CLI_EXIT, r"model\.lr must be a finite number > 0, got nan"),
    Case("knob-ema-decay-nan", "set ema_decay to .nan in YAML",
         with_yaml("model:\n  init_args:\n    ema_decay: .nan\n"), CLI_EXIT,
         r"model\.ema_decay must be a number in \[0, 1\] \(e\.g\. 0\.999\), got nan"),
    Case("knob-weight-decay-inf", "set weight_decay to .inf in YAML",
         with_yaml("model:\n  init_args:\n    weight_decay: .inf\n"), CLI_EXIT,
         r"model\.weight_decay must be a finite number >= 0, got inf"),
    Case("knob-sigma-data-inf", "set sigma_data to .inf in YAML",
         with_yaml("model:\n  init_args:\n    sigma_data: .inf\n"), CLI_EXIT,
         r"model\.sigma_data must be a finite number > 0 \(the data's standard deviation\), got inf"),
    Case("sampler-nfe-absurd", "set nfe to 1e9", lambda tmp: GDDIM(nfe=10 ** 9), ValueError,
         r"nfe must be at most 100000 \(gddim_lightning\.limits\.MAX_NFE\), got 1000000000"),
    Case("sampler-nfe-0", "set nfe to 0", lambda tmp: GDDIM(nfe=0), ValueError,
         r"nfe must be an integer >= 2, got 0"),
    Case("sampler-nfe-1-with-denoise", "set nfe to 1 with a denoising step", lambda tmp: GDDIM(nfe=1), ValueError,
         r"nfe must be an integer >= 2, got 1 \(one grid step plus 1 denoising evaluation\)"),
    Case("sampler-negative-lambda", "set a negative lambda_", lambda tmp: GDDIM(lambda_=-0.5), ValueError,
         r"lambda_ must be >= 0, got -0\.5"),
    Case("sampler-stochastic-multistep", "set lambda_ > 0 with q = 1", lambda tmp: GDDIM(lambda_=1.0, q=1),
         ValueError, r"stochastic gDDIM \(lambda_=1\.0\) is single-step only; set q=0 or lambda_=0"),
    Case("sampler-unknown-denoise", "asked for a denoising step that does not exist",
         lambda tmp: GDDIM(denoise="ddim"), ValueError,
         r"denoise='ddim' is not one of \('tweedie', 'euler', 'none'\)"),
    Case("sampler-t-min-zero", "set t_min to 0", lambda tmp: GDDIM(t_min=0.0), ValueError,
         r"t_min must be > 0 \(the denoising step covers t_min -> 0\), got 0\.0"),
    Case("sampler-t-min-at-T", "set t_min to the process's end time T and ran predict",
         cli("predict", "toy_vp.yaml", "--predict.num_samples", "2", "--predict.out_dir", f"{TMP}/samples",
             "--model.init_args.sampler.init_args.t_min", "1.0"), CLI_EXIT,
         r"t_min=1\.0 must lie in \(0, T=1\.0\)"),
    Case("explicit-grid-not-decreasing", "gave an explicit time grid that is not decreasing",
         lambda tmp: sample_vp(GDDIM(nfe=4, grid=ExplicitGrid([1.0, 0.5, 0.7, 0.1]))), ValueError,
         r"time grid must be strictly decreasing from T to t_min"),
    Case("explicit-grid-nfe-mismatch", "gave an explicit grid with another number of steps than nfe",
         lambda tmp: sample_vp(GDDIM(nfe=10, t_min=0.1, grid=ExplicitGrid([1.0, 0.5, 0.2, 0.1]))), ValueError,
         r"ExplicitGrid has 3 steps but the sampler asks for 9"),
    # --- data sets on disk
    Case("cifar-root-missing", "pointed data.init_args.root at a folder that does not exist",
         cli("fit", "cifar10_cld.yaml", "--data.init_args.root", f"{TMP}/nope", "--trainer.accelerator", "cpu"),
         CLI_EXIT, r"data\.init_args\.root='.*nope' is not an existing folder; expected the files data_batch_1"),
    Case("cifar-batch-missing", "gave a CIFAR-10 folder with a batch file missing",
         lambda tmp: cifar_setup(tmp, skip=("data_batch_3",)), FileNotFoundError,
         r"missing CIFAR-10 file\(s\) data_batch_3 in '.*'"),
    Case("cifar-batch-corrupt", "gave a CIFAR-10 folder with a corrupt batch file",
         corrupt_cifar, ValueError, r"could not unpickle CIFAR-10 batch '.*data_batch_2'"),
    Case("image-folder-missing", "pointed an image folder data set at a missing folder",
         lambda tmp: ImageFolderDataModule(root=str(tmp / "nope"), image_size=8), FileNotFoundError,
         r"data\.init_args\.root='.*nope' is not an existing folder"),
    Case("image-folder-empty", "pointed an image folder data set at a folder without images",
         empty_image_folder, FileNotFoundError, r"data\.init_args\.root='.*imgs': no image files found"),
    Case("image-folder-corrupt-image", "had a file that is not an image in the image folder",
         corrupt_image, ValueError, r"could not read image '.*broken\.jpg'"),
    # --- checkpoints
    Case("checkpoint-missing", "passed a --ckpt_path that does not exist",
         cli("predict", "toy_vp.yaml", "--ckpt_path", "nope.ckpt"), CLI_EXIT,
         r"--ckpt_path 'nope\.ckpt': no such checkpoint file"),
    Case("checkpoint-corrupt", "passed a --ckpt_path that is not a checkpoint (random bytes)",
         cli("fit", "toy_vp.yaml", "--ckpt_path", f"{TMP}/bad.ckpt",
             setup=lambda tmp: (tmp / "bad.ckpt").write_bytes(np.random.default_rng(0).bytes(512))),
         CLI_EXIT, r"--ckpt_path .*bad\.ckpt cannot be loaded safely: .*the file is corrupt, not a checkpoint"),
    Case("checkpoint-with-code", "passed a checkpoint that carries pickled code",
         cli("predict", "toy_vp.yaml", "--ckpt_path", f"{TMP}/code.ckpt", setup=write_code_checkpoint),
         CLI_EXIT, r"--ckpt_path .*code\.ckpt cannot be loaded safely: .*Unsupported global", check=nothing_ran),
    # --- evaluation
    Case("inception-weights-missing", "asked for Inception FID with a weights file that does not exist",
         lambda tmp: make_inception_fid(tmp / "pt_inception.pth"), FileNotFoundError,
         r"make_inception_fid\(weights_path=\.\.\.\): no file at '.*pt_inception\.pth'"),
    Case("inception-metric-without-weights", "set SampleCallback(metric='inception') without weights",
         lambda tmp: SampleCallback(metric="inception"), ValueError,
         r"SampleCallback\(metric='inception'\) needs inception_weights=<local path of "
         r"pt_inception-2015-12-05-6726825d\.pth>"),
    # --- predict
    Case("predict-out-dir-occupied", "ran predict into a folder holding an earlier run's samples",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples", setup=occupied_out_dir), CLI_EXIT,
         r"predict\.out_dir='.*samples' already holds samples of an earlier run .*--predict\.overwrite true",
         check=untouched_out_dir),
    Case("predict-out-dir-foreign-files", "asked predict to overwrite a folder holding files it did not write",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples", "--predict.overwrite", "true",
             setup=occupied_out_dir), CLI_EXIT,
         r"holds 1 file\(s\) under output names that no earlier predict run recorded in its meta\.json, or that "
         r"changed since \(meta\.json\); predict never overwrites or deletes them", check=untouched_out_dir),
    Case("predict-out-dir-is-file", "gave predict an out_dir that is a file",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples",
             setup=lambda tmp: (tmp / "samples").write_text("mine")), CLI_EXIT,
         r"predict\.out_dir='.*samples' is a file, not a folder"),
    Case("predict-untrained", "ran predict without --ckpt_path",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples"), CLI_EXIT,
         r"predict with no --ckpt_path would sample an untrained network; pass --ckpt_path FILE\.ckpt"),
    Case("checkpoint-not-a-checkpoint", "passed a torch.save'd tensor as --ckpt_path",
         cli("predict", "toy_vp.yaml", "--ckpt_path", f"{TMP}/w.pt",
             setup=lambda tmp: torch.save(torch.zeros(3), tmp / "w.pt")), CLI_EXIT,
         r"--ckpt_path .*w\.pt is not a checkpoint of this package \(it holds Tensor\)"),
    Case("checkpoint-other-model", "sampled a VP checkpoint with the BDM config",
         cli("predict", "bdm.yaml", "--ckpt_path", str(REPO / "pretrained" / "vp_digits.ckpt"),
             "--predict.out_dir", f"{TMP}/samples"), CLI_EXIT,
         r"the checkpoint was trained with another model than this config builds \(process: checkpoint "
         r"'VPSDE\(.*this config 'BDM\("),
    Case("predict-unknown-format", "asked predict for an output format that does not exist (gif)",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples", "--predict.format", "[npz,gif]"),
         CLI_EXIT, r"predict\.format: unknown format\(s\) \['gif'\]; choose from \['npz', 'png', 'grid'\]"),
    Case("predict-seed-too-large", "asked predict for seeds beyond 63 bits",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples", "--predict.seed", str(2 ** 63)),
         ValueError, r"predict\.seed must be an integer in \[0, \d+\], got 9223372036854775808 \(the last sample's seed"),
    Case("predict-no-samples", "asked predict for 0 samples",
         cli("predict", "toy_vp.yaml", "--predict.out_dir", f"{TMP}/samples", "--predict.num_samples", "0"),
         ValueError, r"predict\.num_samples must be >= 1, got 0"),
]


# ------------------------------------------------------------------------------ running a case
def _error_block(stderr: str) -> str:
    """The ``error: ...`` part of an argparse-style exit (after the usage text)."""
    starts = [m.start() for m in re.finditer(r"^error: ", stderr, re.MULTILINE)]
    assert len(starts) == 1, f"expected one 'error:' message on stderr, got {len(starts)}:\n{stderr[-3000:]}"
    return stderr[starts[0]:]


def run_case(case: Case, tmp: Path, capsys) -> None:
    if isinstance(case.trigger, Cli):
        if case.trigger.setup is not None:
            case.trigger.setup(tmp)
        args = [a.replace(TMP, str(tmp)) for a in case.trigger.args]
        try:
            main(args)
        except SystemExit as exc:
            stderr = capsys.readouterr().err
            assert case.expect == CLI_EXIT, f"expected {case.expect}, the CLI exited:\n{stderr[-3000:]}"
            assert exc.code not in (0, None), f"exit code {exc.code!r}"
            assert "Traceback (most recent call last)" not in stderr
            block = _error_block(stderr)
            assert re.search(case.match, block), f"{case.match!r} not in:\n{block}"
            return
        except Exception as exc:  # noqa: BLE001 - checked below
            assert case.expect != CLI_EXIT, f"expected a CLI exit, got {type(exc).__name__}: {exc}"
            _check_exception(case, exc)
            return
        pytest.fail("the CLI accepted the input")
    with pytest.raises(BaseException) as info:
        case.trigger(tmp)
    _check_exception(case, info.value)


def _check_exception(case: Case, exc: BaseException) -> None:
    assert isinstance(case.expect, type), f"expected a CLI exit, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, case.expect), f"expected {case.expect.__name__}, got {type(exc).__name__}: {exc}"
    msg = str(exc)
    assert WRAPPED not in msg, f"the message is buried in jsonargparse's wrapper:\n{msg}"
    assert re.search(case.match, msg), f"{case.match!r} not in: {msg}"


def test_case_ids_are_unique_and_stable():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9A-Z]+)*", i) for i in ids), ids
    for case in CASES:
        re.compile(case.match)
        assert case.expect == CLI_EXIT or (isinstance(case.expect, type) and issubclass(case.expect, BaseException))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (logs, samples) stay in tmp_path
    run_case(case, tmp_path, capsys)
    if case.check is not None:
        case.check(tmp_path)


# ------------------------------------------------------------------------------ docs/errors.md
_ROW = re.compile(r"^\| `(?P<id>[^`]+)` \| (?P<what>.+?) \| (?P<message>.+?) \| (?P<fix>.+) \|\s*$")
_COUNT = re.compile(r"lists \*\*(\d+)\*\* error cases")


def _doc_rows() -> dict[str, re.Match]:
    rows: dict[str, re.Match] = {}
    for line in DOCS_PAGE.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m:
            assert m["id"] not in rows, f"docs/errors.md: row {m['id']} twice"
            rows[m["id"]] = m
    return rows


def _code_spans(cell: str) -> list[str]:
    return [a or b for a, b in re.findall(r"``\s?(.+?)\s?``|`([^`]+)`", cell)]


def test_docs_table_matches_the_catalogue():
    """docs/errors.md has one row per case (by id, same count), states the count in its first sentence,
    and quotes for every case a message excerpt that the case's regex matches."""
    text = DOCS_PAGE.read_text(encoding="utf-8")
    count = _COUNT.search(text)
    assert count, "docs/errors.md must say 'lists **N** error cases'"
    assert int(count.group(1)) == len(CASES)
    rows = _doc_rows()
    ids = [c.id for c in CASES]
    assert sorted(rows) == sorted(ids), (f"missing in docs: {sorted(set(ids) - set(rows))}; "
                                         f"not in CASES: {sorted(set(rows) - set(ids))}")
    assert len(rows) == len(CASES)
    for case in CASES:
        spans = _code_spans(rows[case.id]["message"])
        assert any(re.search(case.match, s) for s in spans), (
            f"docs/errors.md row {case.id}: no quoted excerpt matches {case.match!r}: {spans}")
        assert rows[case.id]["fix"].strip(), case.id


def test_docs_page_is_in_the_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    assert "errors.md" in str(nav)
