"""What a checkpoint's weights mean, stored on save and checked on load (`CheckpointIdentity`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .checks import norm


class CheckpointIdentity:
    """Mixin of `DiffusionModule`: writes `identity` into every checkpoint and refuses, on load, weights
    trained with another process, backbone, data shape or meaning-changing setting; loads EMA-only
    checkpoints (``pretrained/``) for ``predict`` and ``validate``."""

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
                 if k in stored and norm(stored[k]) != norm(mine[k])]
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
                 if k in stored and k in self.hparams and norm(stored[k]) != norm(self.hparams[k])]
        if clash:
            text = "; ".join(f"{k}: checkpoint {a!r}, model {b!r}" for k, a, b in clash)
            raise ValueError(f"the checkpoint was trained with other model settings ({text}); load it with the config "
                             "it was trained with (the CLI's --ckpt_path applies the checkpoint's own settings)")
        if not checkpoint.get(self.EMA_ONLY_KEY):
            return
        try:
            fitting = self.trainer.state.fn == "fit"
        except RuntimeError:  # not attached to a Trainer (a plain load_from_checkpoint)
            fitting = False
        if fitting:
            raise ValueError("this is an EMA-only checkpoint (pretrained/ or scripts/export_pretrained.py): it has "
                             "no optimiser state to resume training from; use it with predict or validate, or "
                             "fine-tune by loading its weights into a fresh run")
        state = checkpoint["state_dict"]
        prefix = "ema.ema_model."
        for key in [k for k in state if k.startswith(prefix)]:
            state.setdefault("net." + key[len(prefix):], state[key])
