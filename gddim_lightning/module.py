"""The LightningModule: a linear process, a backbone predicting eps, DSM training, EMA, sampling.

`DiffusionModule` serves every process (VP, BDM, CLD, user-defined): the loss is denoising score
matching on eps, ``u_t = Psi(t, 0) lift(x0) + K_t z`` with ``K = R`` (gDDIM, default) or ``L``, and
``t ~ U[t_eps, T]``. `CLDModule` adds the CLD paper's training choices.

Processes and backbones are injected as callables (``class_path`` + ``init_args`` in YAML) and called
with the data shape and the state's channel count, so a config never states a shape twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from ema_pytorch import EMA
from torch import Tensor, nn

from .samplers.base import SampleNoise, SampleResult, Sampler
from .nets.precond import Preconditioner
from .samplers.gddim import GDDIM
from .sdes.base import LinearSDE
from .sdes.cld import CLD


def _norm(value: Any) -> Any:
    """Lists and tuples compare equal (YAML gives lists, code tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_knobs(**knobs: Any) -> None:
    """The optimiser, EMA and data-scale settings: finite and in range, named as in the config (a NaN
    decay or an infinite weight decay would otherwise surface as NaN weights, blamed on the network)."""
    def bad(key: str, value: Any, rule: str) -> ValueError:
        return ValueError(f"model.{key} must be {rule}, got {value!r}")

    def real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (real(knobs["lr"]) and knobs["lr"] > 0):
        raise bad("lr", knobs["lr"], "a finite number > 0")
    if not (real(knobs["weight_decay"]) and knobs["weight_decay"] >= 0):
        raise bad("weight_decay", knobs["weight_decay"], "a finite number >= 0")
    betas = knobs["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(real(b) and 0 <= b < 1 for b in betas)):
        raise bad("betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
    if not (real(knobs["ema_decay"]) and 0 <= knobs["ema_decay"] <= 1):
        raise bad("ema_decay", knobs["ema_decay"], "a number in [0, 1] (e.g. 0.999)")
    if not (real(knobs["sigma_data"]) and knobs["sigma_data"] > 0):
        raise bad("sigma_data", knobs["sigma_data"], "a finite number > 0 (the data's standard deviation)")
    for key, low in (("warmup_steps", 0), ("ema_update_after_step", 0), ("ema_update_every", 1)):
        value = knobs[key]
        if not (real(value) and int(value) == value and value >= low):
            raise bad(key, value, f"an integer >= {low}")


class DiffusionModule(L.LightningModule):
    """Train an eps-network for a linear process and sample it with any sampler.

    Args:
        process: builds the process from the data shape, e.g. ``{class_path: gddim_lightning.sdes.CLD}``.
        backbone: builds the network from the state's channel count (first state axis), e.g.
            ``{class_path: gddim_lightning.nets.UNet, init_args: {base_channels: 32}}``.
        data_shape: shape of one data sample (linked from the data module by the CLI).
        parameterization: ``"R"`` (gDDIM, default) or ``"L"`` (Cholesky, as the CLD paper).
        mixed_score: add the exact eps of standard-normal data to the network output (the CLD paper's
            "mixed score"; works for every process).
        precondition: EDM preconditioning generalised to the process's blocks (`Preconditioner`): the
            network sees its input scaled to unit variance, predicts only the part of eps that ``u``
            does not determine (scaled by that part's standard deviation), and regresses a unit-variance
            target. Same optimum as plain DSM; it stops the network's errors on what the process has
            erased (BDM's blurred-away frequencies) from reaching the samples. Replaces ``mixed_score``.
        sigma_data: the data scale the preconditioning assumes (standard deviation per coordinate).
        t_eps: smallest training time.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: EMA decay (``ema_pytorch.EMA`` beta).
        ema_update_after_step: EMA starts tracking after this many optimiser steps.
        ema_update_every: EMA update period in steps.
        sampler: the sampler used by `sample`, the sampling callback and ``predict`` (default: gDDIM,
            NFE 20, order 2).
    """

    def __init__(
        self,
        process: Callable[[tuple[int, ...]], LinearSDE],
        backbone: Callable[[int], nn.Module],
        data_shape: Sequence[int] = (1, 8, 8),
        parameterization: str = "R",
        mixed_score: bool = False,
        precondition: bool = False,
        sigma_data: float = 0.5,
        t_eps: float = 1e-5,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        ema_decay: float = 0.999,
        ema_update_after_step: int = 0,
        ema_update_every: int = 1,
        sampler: Sampler | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["process", "backbone", "sampler"])
        _check_knobs(lr=lr, weight_decay=weight_decay, betas=betas, ema_decay=ema_decay, sigma_data=sigma_data,
                     warmup_steps=warmup_steps, ema_update_after_step=ema_update_after_step,
                     ema_update_every=ema_update_every)
        if parameterization not in ("R", "L"):
            raise ValueError(f"model.parameterization must be 'R' (gDDIM) or 'L' (Cholesky), got {parameterization!r}")
        if data_shape is None:
            raise ValueError("model.data_shape is not set: the CLI links it from the data module's data_shape "
                             "(a data module that has none cannot train); set model.init_args.data_shape")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.process = process(self.data_shape)
        if not isinstance(self.process, LinearSDE):
            raise TypeError(f"model.process must build a LinearSDE, got {type(self.process).__name__}")
        if not 0 < t_eps < self.process.T:
            raise ValueError(f"model.t_eps must lie in (0, T={self.process.T}), got {t_eps}")
        self.parameterization = parameterization
        if precondition and mixed_score:
            raise ValueError("model.precondition and model.mixed_score both add a skip term; precondition is the "
                             "general form (mixed_score is its sigma_data = 1 skip alone): set one of them")
        self.precond = Preconditioner(self.process, sigma_data, parameterization) if precondition else None
        self._standard_normal = Preconditioner(self.process, 1.0, parameterization, output_scale=False)
        self.net = self._build_backbone(backbone)
        self.mixed_score = mixed_score
        self.t_eps = t_eps
        self.ema = EMA(self.net, beta=ema_decay, update_after_step=ema_update_after_step,
                       update_every=ema_update_every, include_online_model=False)
        self.sampler = sampler if sampler is not None else GDDIM(nfe=20, q=1)
        self._check_backbone()
        self.check_sampler(self.sampler, "model.sampler")

    # ------------------------------------------------------------------ model
    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one network output: the state shape (eps on every state component)."""
        return tuple(self.process.state_shape)

    #: keyword names under which backbones take their output channel count (UNet, MLP)
    OUTPUT_KEYWORDS = ("out_channels", "out_dim")

    def _build_backbone(self, backbone: Callable[..., nn.Module]) -> nn.Module:
        """Called with the state's channel count; where the output differs (a velocity-only CLD network)
        also with the output count as ``out_channels=`` (UNet) or ``out_dim=`` (MLP)."""
        c_in, c_out = self.process.state_shape[0], self.output_shape[0]
        if c_out == c_in:
            return backbone(c_in)
        for key in self.OUTPUT_KEYWORDS:
            try:
                return backbone(c_in, **{key: c_out})
            except TypeError as err:
                if f"unexpected keyword argument '{key}'" not in str(err):
                    raise
        raise ValueError(f"model.backbone must produce {c_out} output channels (state: {c_in}), but it takes none "
                         f"of the keywords {self.OUTPUT_KEYWORDS}; add one to the backbone's __init__")

    def _check_backbone(self) -> None:
        u = torch.zeros(2, *self.process.state_shape)
        try:
            with torch.no_grad():
                out = self.net(u, torch.full((2,), 0.5))
        except Exception as err:
            raise ValueError(
                f"model.backbone cannot take the state of {self.process.describe()} (state shape "
                f"{self.process.state_shape}): {err}"
            ) from err
        if tuple(out.shape[1:]) != self.output_shape:
            raise ValueError(f"model.backbone returns shape {tuple(out.shape[1:])}, but this model needs "
                             f"{self.output_shape}; set the backbone's output channels to match")

    def check_sampler(self, sampler: Sampler, name: str = "sampler") -> None:
        """Refuse a sampler this model cannot drive (subclasses with partial outputs override)."""
        if not isinstance(sampler, Sampler):
            raise TypeError(f"{name} must be a gddim_lightning sampler, got {type(sampler).__name__}")
        try:
            sampler.check(self.process)  # at build time, not at the first sampling callback
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None

    def _gaussian_eps(self, u: Tensor, t: Tensor) -> Tensor:
        """Exact eps (in this module's parameterisation) if the data were N(0, I)."""
        return self._standard_normal.skip_eps(u, t)

    def predict_eps(self, u: Tensor, t: Tensor, use_ema: bool = False) -> Tensor:
        """Network eps in the module's parameterisation (``[B, *state_shape]``)."""
        net = self.ema.ema_model if use_ema else self.net
        if self.precond is not None:
            return self.precond.eps(net, u, t)
        eps = net(u, t)
        if self.mixed_score:
            eps = eps + self._gaussian_eps(u, t)
        return eps

    def eps_fn(self, use_ema: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
        """The ``R``-parameterised ``eps_fn(u, t)`` the samplers need."""

        def fn(u: Tensor, t: Tensor) -> Tensor:
            eps = self.predict_eps(u, t, use_ema)
            return self.process.eps_L_to_R(eps, t) if self.parameterization == "L" else eps

        return fn

    # ------------------------------------------------------------------ training
    def sample_t(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times ``t ~ U[t_eps, T]`` as float64 ``[n]``."""
        return torch.rand(n, generator=generator, dtype=torch.float64) * (self.process.T - self.t_eps) + self.t_eps

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising score matching on eps, averaged over the batch."""
        if tuple(x0.shape[1:]) != self.data_shape:
            raise ValueError(f"batch has sample shape {tuple(x0.shape[1:])}, model.data_shape is {self.data_shape}")
        B = x0.shape[0]
        dev = x0.device
        t = self.sample_t(B, generator)
        z = torch.randn((B, *self.process.state_shape), generator=generator, dtype=torch.float64)
        z = z.to(device=dev, dtype=x0.dtype)
        u = self.process.perturb(x0, t, z, self.parameterization)
        t_model = t.to(device=dev, dtype=x0.dtype)
        if self.precond is not None:  # the weighted regression of the preconditioned network
            pred, target = self.precond.regression(self.net, u, t_model, x0, z)
            return self.reduce_loss(pred, target) * self.process.block_size
        return self.reduce_loss(self.predict_eps(u, t_model), z)

    def reduce_loss(self, eps: Tensor, z: Tensor) -> Tensor:
        return ((eps - z) ** 2).mean()

    def setup(self, stage: str) -> None:
        self._train_seed = torch.initial_seed()  # set by seed_everything; the same on every rank

    def step_generator(self) -> torch.Generator:
        """Generator of the training times and noise: a function of (seed, rank, global step), so ranks
        draw different noise and a resumed run draws exactly what the uninterrupted one would."""
        seed = getattr(self, "_train_seed", torch.initial_seed())
        key = ((seed * 1_000_003 + self.global_rank) * 1_000_000_007 + self.global_step) % (2**63 - 1)
        return torch.Generator().manual_seed(key)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.loss(batch, generator=self.step_generator())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step}; lower model.lr, enable "
                "trainer.gradient_clip_val, or check the data range"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    #: key marking an EMA-only checkpoint (``scripts/export_pretrained.py``; the files in ``pretrained/``)
    EMA_ONLY_KEY = "gddim_ema_only"

    #: stored hyperparameters that change what the network's output means: a checkpoint whose values differ
    #: from the module's would load without error and sample wrongly
    MEANING_KEYS = ("data_shape", "parameterization", "mixed_score", "precondition", "sigma_data",
                    "network_output", "score_matching")

    #: checkpoint entry with `identity` (written by every save, checked by every load)
    IDENTITY_KEY = "gddim_identity"

    def identity(self) -> dict[str, Any]:
        """What the weights mean beyond the hyperparameters: the process (class and every parameter), the
        backbone (class, parameter count and a digest of its parameter names and shapes, which its
        construction arguments determine) and the data shape. Stored in every checkpoint and in
        ``meta.json``; a checkpoint whose identity differs is refused on load."""
        shapes = [(k, list(v.shape)) for k, v in self.net.state_dict().items()]
        return {
            "process": self.process.describe(),
            "backbone": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
            "backbone_parameters": int(sum(p.numel() for p in self.net.parameters())),
            "backbone_shapes": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16],
            "data_shape": list(self.data_shape),
        }

    def identity_mismatch(self, stored: dict[str, Any] | None) -> str | None:
        """``None`` if ``stored`` (a checkpoint's `identity`) matches this module, else one sentence naming
        every difference, both sides, and what to do. ``stored=None`` (a checkpoint written before
        identities were recorded) cannot be checked and passes."""
        if not stored:
            return None
        mine = self.identity()
        diffs = [f"{k}: checkpoint {stored[k]!r}, this config {mine[k]!r}" for k in mine
                 if k in stored and _norm(stored[k]) != _norm(mine[k])]
        if not diffs:
            return None
        return ("the checkpoint was trained with another model than this config builds (" + "; ".join(diffs) +
                "); use the config it was trained with (its process, backbone and data), or another checkpoint")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.IDENTITY_KEY] = self.identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint trained with another process, backbone or data shape (`identity`) or with
        other `MEANING_KEYS` values than this module's. An EMA-only checkpoint holds the EMA weights
        alone: they become the online weights too, so ``predict`` and ``validate`` run on it; it cannot
        resume training (no optimiser state)."""
        mismatch = self.identity_mismatch(checkpoint.get(self.IDENTITY_KEY))
        if mismatch:
            raise ValueError(mismatch)
        stored = checkpoint.get("hyper_parameters") or {}
        clash = [(k, stored[k], self.hparams[k]) for k in self.MEANING_KEYS
                 if k in stored and k in self.hparams and _norm(stored[k]) != _norm(self.hparams[k])]
        if clash:
            text = "; ".join(f"{k}: checkpoint {a!r}, model {b!r}" for k, a, b in clash)
            raise ValueError(f"the checkpoint was trained with other model settings ({text}); load it with the config "
                             "it was trained with (the CLI's --ckpt_path applies the checkpoint's own settings)")
        if not checkpoint.get(self.EMA_ONLY_KEY):
            return
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            raise ValueError("this is an EMA-only checkpoint (pretrained/ or scripts/export_pretrained.py): it has "
                             "no optimiser state to resume training from; use it with predict or validate, or "
                             "fine-tune by loading its weights into a fresh run")
        state = checkpoint["state_dict"]
        prefix = "ema.ema_model."
        for key in [k for k in state if k.startswith(prefix)]:
            state.setdefault("net." + key[len(prefix):], state[key])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update()  # here, not in on_train_batch_end: ModelCheckpoint saves before that hook

    def validation_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        g = torch.Generator().manual_seed(10_000 + batch_idx)  # same t and noise every validation
        with torch.no_grad():
            loss = self.loss(batch, generator=g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch.shape[0])
        return loss

    test_step = validation_step

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                weight_decay=self.hparams.weight_decay)
        warm = int(self.hparams.warmup_steps)
        if warm <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, seeds: Sequence[int], sampler: Sampler | None = None, batch_size: int = 256,
               use_ema: bool = True, callback: Callable | None = None) -> SampleResult:
        """Sample one item per seed (sample k depends only on seeds[k]), in chunks of ``batch_size``."""
        sampler = sampler if sampler is not None else self.sampler
        self.check_sampler(sampler)
        seeds = list(seeds)
        outs, states, nfe = [], [], 0
        for k in range(0, len(seeds), batch_size):
            noise = SampleNoise(seeds[k : k + batch_size], self.device, self.dtype)
            res = sampler.sample(self.process, self.eps_fn(use_ema), noise, callback=callback)
            outs.append(res.samples)
            states.append(res.state)
            nfe = res.nfe
        return SampleResult(torch.cat(outs), torch.cat(states), nfe)

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """``batch`` holds integer seeds (see `SeedDataModule`); returns samples and their seeds."""
        seeds = [int(s) for s in batch.reshape(-1).tolist()]
        res = self.sample(seeds, batch_size=max(1, len(seeds)))
        return {"samples": res.samples, "seeds": torch.as_tensor(seeds), "nfe": torch.tensor(res.nfe)}


class CLDModule(DiffusionModule):
    """`DiffusionModule` for CLD with the CLD paper's training options.

    Args:
        score_matching: ``"hsm"`` (hybrid: the initial velocity is marginalised into ``Sigma_0``, the
            gDDIM default) or ``"dsm"`` (the initial velocity ``v0 ~ N(0, gamma M)`` is sampled and the
            regression target is the conditional eps given ``(x0, v0)``).
        loss_on: ``"both"`` (eps on x and v channels, gDDIM) or ``"velocity"`` (loss on the v channels
            only, as the CLD paper's ``L`` parameterisation; with ``parameterization="L"`` the x part of
            eps does not enter the reverse SDE's score term). Default: ``"velocity"`` with a
            velocity-only network, else ``"both"``.
        network_output: ``"both"`` (the network predicts eps on x and v) or ``"velocity"`` (the CLD
            paper's network: it predicts only the v part of the ``L``-parameterised eps, which alone
            gives the velocity score ``-eps_v / L_vv``, all that the reverse SDE and probability flow
            use). Needs ``parameterization="L"``, and samplers that use only that drift
            (`EulerMaruyama`, `Heun`, `RK45`, `SSCS`, ``GDDIM(K="L")``) with ``denoise`` ``"euler"``
            or ``"none"``; gDDIM with ``K="R"`` and Tweedie denoising need the x part as well and
            are refused.
        **kwargs: everything `DiffusionModule` takes.
    """

    def __init__(self, *args: Any, score_matching: str = "hsm", loss_on: str | None = None,
                 network_output: str = "both", **kwargs: Any) -> None:
        if network_output not in ("both", "velocity"):
            raise ValueError(f"model.network_output must be 'both' or 'velocity', got {network_output!r}")
        self._velocity_only = network_output == "velocity"  # read by output_shape during the base init
        if loss_on is None:
            loss_on = "velocity" if self._velocity_only else "both"
        if loss_on not in ("both", "velocity"):
            raise ValueError(f"model.loss_on must be 'both' or 'velocity', got {loss_on!r}")
        if self._velocity_only and loss_on != "velocity":
            raise ValueError("model.loss_on='both' needs a network that predicts both parts; with "
                             "network_output='velocity' the loss is on the velocity part: drop loss_on")
        if self._velocity_only and kwargs.get("parameterization", "R") != "L":
            raise ValueError(
                "model.network_output='velocity' needs model.parameterization='L': only with the Cholesky "
                "factor does the v part of eps determine the velocity score by itself"
            )
        if kwargs.get("precondition", False) and (self._velocity_only or loss_on != "both" or score_matching != "hsm"):
            raise ValueError("model.precondition needs the gDDIM training setting on CLD: network_output 'both', "
                             "loss_on 'both' and score_matching 'hsm' (its target is the unit-variance residual of "
                             "the full eps under hybrid score matching)")
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["process", "backbone", "sampler"])
        if not isinstance(self.process, CLD):
            raise TypeError(f"CLDModule needs a CLD process, got {type(self.process).__name__}")
        if score_matching not in ("hsm", "dsm"):
            raise ValueError(f"model.score_matching must be 'hsm' or 'dsm', got {score_matching!r}")
        self.score_matching = score_matching
        self.loss_on = loss_on
        p = self.process
        # Conditional kernel given (x0, v0): same dynamics, no initial velocity variance.
        self._dsm = CLD(p.data_shape, p.beta0, p.beta_slope, p.m_inv, 0.0, p.eps_num, p.Gamma, p.T)

    @property
    def output_shape(self) -> tuple[int, ...]:
        shape = tuple(self.process.state_shape)
        if self._velocity_only:  # set before the base __init__, which calls this
            return (shape[0] // 2, *shape[1:])  # the state is [x channels, v channels]
        return shape

    def predict_eps(self, u: Tensor, t: Tensor, use_ema: bool = False) -> Tensor:
        if not self._velocity_only:
            return super().predict_eps(u, t, use_ema)
        net = self.ema.ema_model if use_ema else self.net
        # The x part is not predicted: fill it with the exact eps of N(0, I) data. Samplers accepted by
        # `check_sampler` never use it (the drift depends on eps_v alone); it keeps eps well defined.
        gauss = self._gaussian_eps(u, t)
        v = net(u, t).reshape(u.shape[0], -1)
        if self.mixed_score:
            v = v + self._velocity(gauss)
        return torch.cat([self._position(gauss), v], 1).reshape(u.shape)

    @staticmethod
    def _position(a: Tensor) -> Tensor:
        flat = a.reshape(a.shape[0], -1)
        return flat[:, : flat.shape[1] // 2]

    @staticmethod
    def _velocity(a: Tensor) -> Tensor:
        flat = a.reshape(a.shape[0], -1)
        return flat[:, flat.shape[1] // 2 :]

    def check_sampler(self, sampler: Sampler, name: str = "sampler") -> None:
        super().check_sampler(sampler, name)
        if self._velocity_only and sampler.needs_full_score:
            raise ValueError(
                f"{name} {type(sampler).__name__} uses the position score, which a velocity-only network "
                "(model.network_output='velocity') does not predict. Use GDDIM with K='L', SSCS, "
                "EulerMaruyama, Heun or RK45, with denoise 'euler' or 'none' (got denoise="
                f"{sampler.denoise!r}), or train with network_output='both'"
            )

    def loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.score_matching == "hsm":
            return super().loss(x0, generator)
        p, lay = self.process, self.process.layout
        B, dev = x0.shape[0], x0.device
        t = self.sample_t(B, generator)
        z = torch.randn((B, *p.state_shape), generator=generator, dtype=torch.float64)
        v0 = math.sqrt(p.gamma * p.M) * torch.randn((B, *p.data_shape), generator=generator, dtype=torch.float64)
        u0 = lay.lift(x0.double().cpu())
        u0 = u0 + lay.from_blocks(torch.stack([torch.zeros_like(v0), v0], 1))
        # u_t = Psi(t,0) u0 + K'_t z; the target eps under this module's K_t is K_t^T K'_t^{-T} z.
        psi = lay.view(p.psi(t, torch.zeros_like(t)))
        Kp = self._dsm.K(t, self.parameterization)
        u = lay.apply(psi, lay.to_blocks(u0)) + lay.apply(lay.view(Kp), lay.to_blocks(z))
        target = lay.apply(lay.view(p.K(t, self.parameterization).transpose(-1, -2)
                                    @ torch.linalg.inv(Kp).transpose(-1, -2)), lay.to_blocks(z))
        u, target = (lay.from_blocks(v).to(device=dev, dtype=x0.dtype) for v in (u, target))
        eps = self.predict_eps(u, t.to(device=dev, dtype=x0.dtype))
        return self.reduce_loss(eps, target)

    def reduce_loss(self, eps: Tensor, z: Tensor) -> Tensor:
        if self.loss_on == "both":
            return super().reduce_loss(eps, z)
        return ((self._velocity(eps) - self._velocity(z)) ** 2).mean()
