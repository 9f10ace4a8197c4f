"""Network backbones mapping ``(u, t) -> eps``.

``t`` is continuous time in ``[0, T]``, given as a float, a 0-dim tensor or a
tensor of shape ``[B]``.

* `MLP`: residual FiLM MLP for flat data ``[B, in_dim]``.
* `UNet`: DDPM++-style UNet for images ``[B, C, H, W]``.
* `SinusoidalEmbedding`, `FourierEmbedding`: time embeddings.
* `Preconditioner`: EDM preconditioning for any linear process (input scale, skip, output scale).
"""

from gddim_lightning.nets.embeddings import FourierEmbedding, SinusoidalEmbedding
from gddim_lightning.nets.mlp import MLP
from gddim_lightning.nets.precond import Preconditioner
from gddim_lightning.nets.unet import UNet

__all__ = ["MLP", "FourierEmbedding", "Preconditioner", "SinusoidalEmbedding", "UNet"]
