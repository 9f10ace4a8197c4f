"""`DiffusionModule`: a linear process, a backbone predicting eps, DSM training, EMA, sampling.

`DiffusionModule` serves every process (VP, BDM, CLD, user-defined): the loss is denoising score
matching on eps, ``u_t = Psi(t, 0) lift(x0) + K_t z`` with ``K = R`` (gDDIM, default) or ``L``, and
``t ~ U[t_eps, T]``. `CLDModule` adds the CLD paper's training choices.

Processes and backbones are injected as callables (``class_path`` + ``init_args`` in YAML) and called
with the data shape and the state's channel count, so a config never states a shape twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from ema_pytorch import EMA
from torch import Tensor, nn

from ..data.batches import data_batch
from ..nets.precond import Preconditioner
from ..samplers.base import SampleNoise, SampleResult, Sampler
from ..samplers.gddim import GDDIM
from ..sdes.base import LinearSDE
from .checks import check_knobs
from .identity import CheckpointIdentity


class DiffusionModule(CheckpointIdentity, L.LightningModule):
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
        check_knobs(lr=lr, weight_decay=weight_decay, betas=betas, ema_decay=ema_decay, sigma_data=sigma_data,
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
        try:
            params = inspect.signature(backbone).parameters
        except (TypeError, ValueError):  # no introspectable signature (some builtins): try the first keyword
            params = {self.OUTPUT_KEYWORDS[0]: None}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values() if p is not None)
        for key in self.OUTPUT_KEYWORDS:
            if key in params or takes_any:
                return backbone(c_in, **{key: c_out})
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
        """Denoising score matching on eps, averaged over the batch (``x0``: a batch, see `data_batch`)."""
        x0 = data_batch(x0)
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

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        batch = data_batch(batch)  # a tensor, (x, y) or {"x": x}
        loss = self.loss(batch, generator=self.step_generator())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step}; lower model.lr, enable "
                "trainer.gradient_clip_val, or check the data range"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update()  # here, not in on_train_batch_end: ModelCheckpoint saves before that hook

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        batch = data_batch(batch)  # a tensor, (x, y) or {"x": x}
        g = torch.Generator().manual_seed(10_000 + batch_idx)  # same t and noise every validation
        with torch.no_grad():
            loss = self.loss(batch, generator=g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch.shape[0])
        return loss

    test_step = validation_step

    def configure_optimizers(self, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """AdamW over the network (``lr``, ``betas``, ``weight_decay``) with ``warmup_steps`` steps of
        linear learning-rate warm-up.

        Args:
            optimizer: an optimiser to use instead of AdamW (the CLI's ``--optimizer``); the warm-up
                applies to it as well.
        """
        opt = optimizer if optimizer is not None else torch.optim.AdamW(
            self.net.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
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


