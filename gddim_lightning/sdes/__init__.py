"""Linear diffusion processes (pure torch, float64 numerics)."""

from .base import LinearSDE, as_time
from .cld import CLD
from .dct import dct2, dct_frequencies, dct_matrix, idct2
from .layout import BlockLayout
from .scalar import BDM, ScalarBlockSDE, VPSDE
from .schedules import CosineLogSNRSchedule, CosineSchedule, LinearSchedule, NoiseSchedule

__all__ = [
    "BDM", "BlockLayout", "CLD", "CosineLogSNRSchedule", "CosineSchedule", "LinearSDE", "LinearSchedule",
    "NoiseSchedule", "ScalarBlockSDE", "VPSDE", "as_time", "dct2", "dct_frequencies", "dct_matrix", "idct2",
]
