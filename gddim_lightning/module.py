"""The LightningModule: a linear process, a backbone predicting eps, DSM training, EMA, sampling.

`DiffusionModule` serves every process (VP, BDM, CLD, user-defined): the loss is denoising score
matching on eps, ``u_t = Psi(t, 0) lift(x0) + K_t z`` with ``K = R`` (gDDIM, default) or ``L``, and
``t ~ U[t_eps, T]``. `CLDModule` adds the CLD paper's training choices.

Processes and backbones are injected as callables (``class_path`` + ``init_args`` in YAML) and called
with the data shape and the state's channel count, so a config never states a shape twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from ema_pytorch import EMA
from torch import Tensor, nn

from .samplers.base import SampleNoise, SampleResult, Sampler
from .samplers.gddim import GDDIM
from .sdes.base import LinearSDE, as_time
from .sdes.cld import CLD


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
        if parameterization not in ("R", "L"):
            raise ValueError(f"model.parameterization must be 'R' (gDDIM) or 'L' (Cholesky), got {parameterization!r}")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.process = process(self.data_shape)
        if not isinstance(self.process, LinearSDE):
            raise TypeError(f"model.process must build a LinearSDE, got {type(self.process).__name__}")
        if not 0 < t_eps < self.process.T:
            raise ValueError(f"model.t_eps must lie in (0, T={self.process.T}), got {t_eps}")
        self.net = backbone(self.process.state_shape[0])
        self.parameterization = parameterization
        self.mixed_score = mixed_score
        self.t_eps = t_eps
        self.ema = EMA(self.net, beta=ema_decay, update_after_step=ema_update_after_step,
                       update_every=ema_update_every, include_online_model=False)
        self.sampler = sampler if sampler is not None else GDDIM(nfe=20, order=2)
        self._check_backbone()

    # ------------------------------------------------------------------ model
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
        if tuple(out.shape) != tuple(u.shape):
            raise ValueError(f"model.backbone returns shape {tuple(out.shape[1:])}, but the state shape is "
                             f"{self.process.state_shape}; set the backbone's output channels to match")

    def _gaussian_eps(self, u: Tensor, t: Tensor) -> Tensor:
        """Exact eps (in this module's parameterisation) if the data were N(0, I)."""
        p, lay = self.process, self.process.layout
        t64 = as_time(t)
        psi = p.psi(t64, torch.zeros_like(t64))
        P = torch.zeros(p.block_size, p.block_size, dtype=torch.float64)
        P[lay.data_index, lay.data_index] = 1.0
        C = p.Sigma(t64) + psi @ P @ psi.transpose(-1, -2)
        A = p.K(t64, self.parameterization).transpose(-1, -2) @ torch.linalg.inv(C)
        return lay.from_blocks(lay.apply(lay.view(A.to(u)), lay.to_blocks(u)))

    def predict_eps(self, u: Tensor, t: Tensor, use_ema: bool = False) -> Tensor:
        """Network eps in the module's parameterisation (``[B, *state_shape]``)."""
        net = self.ema.ema_model if use_ema else self.net
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
        eps = self.predict_eps(u, t.to(device=dev, dtype=x0.dtype))
        return self.reduce_loss(eps, z)

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
            eps does not enter the reverse SDE's score term).
        **kwargs: everything `DiffusionModule` takes.
    """

    def __init__(self, *args: Any, score_matching: str = "hsm", loss_on: str = "both", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["process", "backbone", "sampler"])
        if not isinstance(self.process, CLD):
            raise TypeError(f"CLDModule needs a CLD process, got {type(self.process).__name__}")
        if score_matching not in ("hsm", "dsm"):
            raise ValueError(f"model.score_matching must be 'hsm' or 'dsm', got {score_matching!r}")
        if loss_on not in ("both", "velocity"):
            raise ValueError(f"model.loss_on must be 'both' or 'velocity', got {loss_on!r}")
        self.score_matching = score_matching
        self.loss_on = loss_on
        p = self.process
        # Conditional kernel given (x0, v0): same dynamics, no initial velocity variance.
        self._dsm = CLD(p.data_shape, p.beta0, p.beta_slope, p.m_inv, 0.0, p.eps_num, p.Gamma, p.T)

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
        lay = self.process.layout
        v = lambda a: a.reshape(a.shape[0], 2, *self.data_shape)[:, 1]  # noqa: E731
        del lay
        return ((v(eps) - v(z)) ** 2).mean()
