"""The LightningModule: a linear process, a backbone predicting eps, DSM training, EMA, sampling.

`DiffusionModule` serves every process (VP, BDM, CLD, user-defined): the loss is denoising score
matching on eps, ``u_t = Psi(t, 0) lift(x0) + K_t z`` with ``K = R`` (gDDIM, default) or ``L``, and
``t ~ U[t_eps, T]``. `CLDModule` adds the CLD paper's training choices.

Processes and backbones are injected as callables (``class_path`` + ``init_args`` in YAML) and called
with the data shape and the state's channel count, so a config never states a shape twice.

Files: `diffusion` (the module), `cld` (the CLD module), `identity` (what a checkpoint means, checked on
load), `checks` (range checks of the settings).
"""

from .cld import CLDModule
from .diffusion import DiffusionModule

__all__ = ["CLDModule", "DiffusionModule"]

for _cls in (CLDModule, DiffusionModule):
    _cls.__module__ = __name__  # the public path that configs, meta.json and saved configs name
